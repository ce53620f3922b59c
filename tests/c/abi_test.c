/* Links include/tpde.h against the built libtpde.so and checks the contract
 * from C: round trip, bounds, error codes with per-call messages, inspect,
 * result documents (kept per handle, and per thread for calls on no
 * handle), checkpoint bundles, and concurrent calls from several threads.
 * Exits non-zero on any failure. */
#define _POSIX_C_SOURCE 200809L /* mkstemp */
#define _DEFAULT_SOURCE /* mkdtemp */
#include "tpde.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0;
#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);          \
            fprintf(stderr, __VA_ARGS__);                                 \
            fprintf(stderr, "\n");                                        \
            failures++;                                                   \
        }                                                                 \
    } while (0)

/* The document the last call on handle left (0: this thread's last call
 * on no handle), NUL-terminated in buf; "" when it cannot be read. */
static const char *result_into(uint64_t handle, char *buf, size_t cap) {
    char err[256];
    uint64_t needed = 0;
    if (tpde_result(handle, buf, cap - 1, &needed, err, sizeof err) != TPDE_OK) {
        fprintf(stderr, "tpde_result(%llu): %s\n", (unsigned long long)handle, err);
        buf[0] = 0;
        return buf;
    }
    buf[needed] = 0;
    return buf;
}

static char doc[1 << 16];
/* result_into a buffer of the main thread. */
static const char *result(uint64_t handle) { return result_into(handle, doc, sizeof doc); }

static float *make_floats(size_t n, unsigned seed) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        x[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 0.04f;
    }
    return x;
}

static int round_trip(size_t n, unsigned seed, int32_t nthreads) {
    char err[256];
    float *src = make_floats(n, seed);
    uint64_t shape[2] = {n / 4, 4};
    uint64_t bound = 0, len = 0, out_len = 0;
    int ok = 1;
    if (tpde_encode_bound(n * 4, TPDE_F32, 2, 0, &bound, err, sizeof err) != TPDE_OK) return 0;
    unsigned char *frame = malloc(bound);
    float *back = malloc(n * sizeof(float));
    int rc = tpde_encode(src, n * 4, TPDE_F32, shape, 2, 0, TPDE_EFFORT_BALANCED, nthreads, frame, bound,
                         &len, err, sizeof err);
    if (rc != TPDE_OK) ok = 0;
    if (ok && tpde_decode(frame, len, back, n * 4, nthreads, &out_len, err, sizeof err) != TPDE_OK) ok = 0;
    if (ok && (out_len != n * 4 || memcmp(src, back, n * 4) != 0)) ok = 0;
    /* This thread's description of its own frame, whatever other threads
     * inspect meanwhile. */
    char want[64], mine[512];
    snprintf(want, sizeof want, "\"raw_size\":%zu,", n * 4);
    if (ok && tpde_inspect(frame, len, err, sizeof err) != TPDE_OK) ok = 0;
    if (ok && strstr(result_into(0, mine, sizeof mine), want) == NULL) ok = 0;
    free(src);
    free(frame);
    free(back);
    return ok;
}

static void *worker(void *arg) {
    size_t id = (size_t)arg;
    for (int i = 0; i < 20; i++) {
        if (!round_trip(4096 + 4 * id, (unsigned)(id * 100 + i), 1)) return (void *)1;
    }
    return NULL;
}

/* A two-tensor bundle from C: a keyframe and a delta, written in memory
 * (piece by piece) and to a file; opened, described, decoded, a wrong
 * reference, a damaged index; adaptive thresholds. */
static void bundle_checks(void) {
    char err[256];
    const size_t n = 5000;
    float *ref = make_floats(n, 7), *cur = make_floats(n, 7), *back = malloc(n * 4), *recon = malloc(n * 4);
    for (size_t i = 0; i < n; i += 3) cur[i] += 1e-3f;
    uint64_t shape[2] = {50, 100};
    tpde_bundle_item items[2];
    memset(items, 0, sizeof items);
    items[0].name = "w";
    items[0].name_len = 1;
    items[0].dtype = TPDE_F32;
    items[0].ndim = 2;
    items[0].shape = shape;
    items[0].data = cur;
    items[0].nbytes = n * 4;
    items[0].ref = ref;
    items[0].ref_nbytes = n * 4;
    items[0].residual_kind = TPDE_RESIDUAL_AUTO;
    items[0].recon = recon;
    items[0].recon_cap = n * 4;
    items[1] = items[0];
    items[1].name = "key";
    items[1].name_len = 3;
    items[1].ref = NULL;
    items[1].ref_nbytes = 0;
    items[1].recon = NULL;
    items[1].recon_cap = 0;
    const char *meta = "{\"epoch\": 2}";
    uint64_t bound = 0, len = 0, piece = 0, flen = 0, h = 0;
    CHECK(tpde_bundle_bound(items, 2, 0, &bound, err, sizeof err) == TPDE_OK, "bundle bound: %s", err);
    uint8_t *blob = malloc(bound + 64);
    /* In memory: the frames, then (after the item outputs are known) the rest. */
    CHECK(tpde_bundle_writer_open(NULL, &h, err, sizeof err) == TPDE_OK, "memory writer open: %s", err);
    CHECK(tpde_bundle_writer_add(h, items, 2, TPDE_EFFORT_BALANCED, 0, blob, bound - 1, &piece, err, sizeof err) ==
          TPDE_E_BUFFER_TOO_SMALL, "add below the bound");
    CHECK(tpde_bundle_writer_add(h, items, 2, TPDE_EFFORT_BALANCED, 0, blob, bound, &piece, err, sizeof err) ==
          TPDE_OK, "memory writer add: %s", err);
    CHECK(strncmp(result(h), "{\"items\":{\"frame_size\":[", 24) == 0 && strstr(doc, "\"residual\":[") != NULL &&
          strstr(doc, ",-1],\"identical\":[false,false]") != NULL && memcmp(recon, cur, n * 4) == 0,
          "how the items were coded: %s", doc);
    CHECK(tpde_bundle_writer_close(h, meta, strlen(meta), 1, blob + piece, 4, &len, err, sizeof err) ==
          TPDE_E_BUFFER_TOO_SMALL && len > piece, "close into too small a buffer");
    CHECK(tpde_bundle_writer_close(h, meta, strlen(meta), 1, blob + piece, bound + 64 - piece, &len, err,
                                   sizeof err) == TPDE_OK, "memory writer close: %s", err);
    CHECK(tpde_bundle_writer_close(h, NULL, 0, 0, NULL, 0, NULL, err, sizeof err) == TPDE_E_INVALID, "closed");
    /* The same bundle, streamed to a file in two calls. */
    char path[] = "/tmp/tpde_abi_bundleXXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(tpde_bundle_writer_open(path, &h, err, sizeof err) == TPDE_OK, "writer open: %s", err);
    CHECK(tpde_bundle_writer_add(h, items, 1, 0, 1, NULL, 0, NULL, err, sizeof err) == TPDE_OK, "add: %s", err);
    CHECK(tpde_bundle_writer_add(h, items + 1, 1, 0, 1, NULL, 0, NULL, err, sizeof err) == TPDE_OK, "add: %s", err);
    CHECK(tpde_bundle_writer_close(h, meta, strlen(meta), 1, NULL, 0, &flen, err, sizeof err) == TPDE_OK,
          "close: %s", err);
    CHECK(flen == len, "streamed %llu vs in memory %llu bytes", (unsigned long long)flen, (unsigned long long)len);
    FILE *f = fopen(path, "rb");
    uint8_t *fblob = malloc(len);
    CHECK(f && fread(fblob, 1, len, f) == len && memcmp(fblob, blob, len) == 0, "streamed file equals memory");
    if (f) fclose(f);
    remove(path);
    free(fblob);
    CHECK(tpde_bundle_writer_add(h, items, 1, 0, 1, NULL, 0, NULL, err, sizeof err) == TPDE_E_INVALID,
          "closed handle");

    double thr[1] = {-1};
    CHECK(tpde_bundle_thresholds(items, 1, 90, 0, thr, err, sizeof err) == TPDE_OK, "thresholds: %s", err);
    double one = -1;
    CHECK(tpde_delta_threshold(cur, ref, n * 4, TPDE_F32, 90, &one, err, sizeof err) == TPDE_OK && thr[0] == one &&
          one > 0, "batched threshold %g, single %g", thr[0], one);
    CHECK(tpde_bundle_thresholds(items + 1, 1, 90, 0, thr, err, sizeof err) == TPDE_E_INVALID, "keyframe threshold");

    uint64_t rh = 0;
    CHECK(tpde_bundle_open(blob, len, &rh, err, sizeof err) == TPDE_OK, "open: %s", err);
    /* Its index, a document kept in the opened bundle: read twice, and too
     * small a buffer refused with the size it needs. */
    char want[64], small[8];
    uint64_t needed = 0;
    snprintf(want, sizeof want, "{\"size\":%llu,\"version_minor\":0,", (unsigned long long)len);
    CHECK(strncmp(result(rh), want, strlen(want)) == 0, "bundle index %s", doc);
    CHECK(strstr(doc, "\"entries\":{\"name\":[\"w\",\"key\"],\"kind\":[1,0],\"dtype\":[11,11],"
                      "\"shape\":[[50,100],[50,100]],\"raw_size\":[20000,20000],") != NULL &&
          strstr(doc, "\"offset\":[8,") != NULL && strstr(doc, "\"meta\":{\"epoch\":2}}") != NULL,
          "entries and metadata: %s", doc);
    size_t first = strlen(doc);
    CHECK(tpde_result(rh, small, sizeof small, &needed, err, sizeof err) == TPDE_E_BUFFER_TOO_SMALL &&
          needed == first && strlen(result(rh)) == first, "a document too large for the buffer stays");
    tpde_bundle_out outs[2] = {{0, back, n * 4, ref, n * 4, NULL, 0}, {1, recon, n * 4, NULL, 0, NULL, 0}};
    CHECK(tpde_bundle_decode(rh, outs, 2, 0, err, sizeof err) == TPDE_OK, "bundle decode: %s", err);
    CHECK(memcmp(back, cur, n * 4) == 0 && memcmp(recon, cur, n * 4) == 0, "bundle round trip");
    outs[0].ref = cur;
    CHECK(tpde_bundle_decode(rh, outs, 1, 0, err, sizeof err) == TPDE_E_REFERENCE, "wrong reference");
    CHECK(strstr(err, "\"w\"") != NULL, "message names the tensor: %s", err);
    CHECK(tpde_bundle_close(rh, err, sizeof err) == TPDE_OK, "close: %s", err);
    CHECK(tpde_bundle_decode(rh, outs, 1, 0, err, sizeof err) == TPDE_E_INVALID, "closed reader");
    blob[len - 20] ^= 1;
    CHECK(tpde_bundle_open(blob, len, &rh, err, sizeof err) == TPDE_E_CORRUPT, "damaged");
    free(blob);
    free(ref);
    free(cur);
    free(back);
    free(recon);
}

int main(void) {
    char err[256];
    CHECK(tpde_abi_version() == TPDE_ABI_VERSION, "abi version %d", tpde_abi_version());
    CHECK(strlen(tpde_version()) > 0, "empty version");
    CHECK(round_trip(1 << 20, 1, 0), "round trip of 1M floats");

    /* inspect */
    size_t n = 1000;
    float *src = make_floats(n, 7);
    uint64_t shape[1] = {n}, bound = 0, len = 0, out_len = 0;
    CHECK(tpde_encode_bound(n * 4, TPDE_F32, 1, 0, &bound, err, sizeof err) == TPDE_OK, "bound");
    unsigned char *frame = malloc(bound);
    CHECK(tpde_encode(src, n * 4, TPDE_F32, shape, 1, 0, 0, 0, frame, bound, &len, err, sizeof err) == TPDE_OK,
          "encode: %s", err);
    CHECK(tpde_inspect(frame, len, err, sizeof err) == TPDE_OK, "inspect: %s", err);
    char want[128];
    snprintf(want, sizeof want, "\"kind\":0,\"dtype\":11,\"shape\":[%zu],\"raw_size\":%zu,\"frame_size\":%llu,", n,
             n * 4, (unsigned long long)len);
    CHECK(strstr(result(0), want) != NULL, "inspect: %s", doc);
    CHECK(tpde_result(987654321, doc, sizeof doc, &out_len, err, sizeof err) == TPDE_E_INVALID,
          "a handle that is not open has no document");

    /* errors carry a code and a message for that call */
    err[0] = 0;
    CHECK(tpde_encode(src, n * 4 - 1, TPDE_F32, shape, 1, 0, 0, 0, frame, bound, &len, err, sizeof err) ==
              TPDE_E_INVALID,
          "size mismatch must be TPDE_E_INVALID");
    CHECK(strlen(err) > 0, "message for invalid argument");
    CHECK(tpde_encode_bound(10, 99, 1, 0, &bound, err, sizeof err) == TPDE_E_INVALID, "bad dtype");
    float *back = malloc(n * 4);
    frame[len / 2] ^= 0x40;
    err[0] = 0;
    CHECK(tpde_decode(frame, len, back, n * 4, 0, &out_len, err, sizeof err) == TPDE_E_CORRUPT,
          "flipped byte must be TPDE_E_CORRUPT");
    CHECK(strstr(err, "checksum") != NULL, "message names the checksum: %s", err);
    frame[len / 2] ^= 0x40;
    CHECK(tpde_decode(frame, len - 1, back, n * 4, 0, &out_len, err, sizeof err) == TPDE_E_CORRUPT, "truncated");
    CHECK(tpde_decode(frame, len, back, n * 4 - 4, 0, &out_len, err, sizeof err) == TPDE_E_BUFFER_TOO_SMALL,
          "small output buffer");
    CHECK(tpde_decode(NULL, 10, back, n * 4, 0, &out_len, NULL, 0) == TPDE_E_INVALID, "NULL src, NULL err");
    frame[4] = 9;
    CHECK(tpde_inspect(frame, len, err, sizeof err) == TPDE_E_UNSUPPORTED, "future major version");
    CHECK(strstr(result(0), want) != NULL, "a failed call leaves the thread's document: %s", doc);
    CHECK(tpde_decompress_file("/nonexistent/x.tpde", "/nonexistent/y", 0, 0, 0, NULL, NULL, err, sizeof err) == TPDE_E_IO,
          "missing file is TPDE_E_IO");
    CHECK(strstr(err, " [errno 2]") != NULL, "an I/O error ends with its errno: %s", err);
    {
        /* A file round trip with a cancel flag that is never set, one that
         * is, and a decode limit. */
        char dir[] = "/tmp/tpde-abi-XXXXXX";
        CHECK(mkdtemp(dir) != NULL, "mkdtemp");
        char in[64], packed[64], out[64];
        snprintf(in, sizeof in, "%s/in", dir);
        snprintf(packed, sizeof packed, "%s/in.tpde", dir);
        snprintf(out, sizeof out, "%s/out", dir);
        FILE *f = fopen(in, "wb");
        for (int i = 0; i < 100000; i++) fputc(i % 251, f);
        fclose(f);
        int32_t cancel = 0;
        uint64_t progress = 0;
        CHECK(tpde_compress_file(in, packed, 0, NULL, 0, 0, &progress, &cancel, err, sizeof err) == TPDE_OK, "compress_file: %s", err);
        CHECK(progress == 100000, "progress %llu", (unsigned long long)progress);
        CHECK(tpde_decompress_file(packed, out, 0, 99999, 0, NULL, NULL, err, sizeof err) == TPDE_E_LIMIT,
              "a decode limit below the size is TPDE_E_LIMIT: %s", err);
        CHECK(access(out, F_OK) != 0, "nothing written past the limit");
        cancel = 1;
        CHECK(tpde_decompress_file(packed, out, 0, 0, 0, NULL, &cancel, err, sizeof err) == TPDE_E_CANCELLED,
              "a set cancel flag is TPDE_E_CANCELLED: %s", err);
        CHECK(access(out, F_OK) != 0, "nothing written when cancelled");
        CHECK(tpde_decompress_file(packed, out, 0, 100000, 0, NULL, NULL, err, sizeof err) == TPDE_OK, "decompress: %s", err);
        /* The flags of the file functions: an existing
         * output refused with EEXIST, a symlink with ELOOP, unknown bits
         * refused rather than ignored. */
        char eexist[32], eloop[32], link_path[64];
        snprintf(eexist, sizeof eexist, " [errno %d]", EEXIST);
        snprintf(eloop, sizeof eloop, " [errno %d]", ELOOP);
        snprintf(link_path, sizeof link_path, "%s/link", dir);
        CHECK(tpde_decompress_file(packed, out, 0, 0, TPDE_FILE_NO_REPLACE, NULL, NULL, err, sizeof err) == TPDE_E_IO,
              "NO_REPLACE onto an existing file is TPDE_E_IO: %s", err);
        CHECK(strstr(err, eexist) != NULL && strstr(err, "already exists") != NULL, "EEXIST: %s", err);
        CHECK(tpde_compress_file(in, packed, 0, NULL, 0, TPDE_FILE_NO_REPLACE, NULL, NULL, err, sizeof err) == TPDE_E_IO,
              "NO_REPLACE onto an existing tpde file is TPDE_E_IO: %s", err);
        CHECK(symlink(out, link_path) == 0, "symlink");
        CHECK(tpde_decompress_file(packed, link_path, 0, 0, TPDE_FILE_NO_FOLLOW, NULL, NULL, err, sizeof err) == TPDE_E_IO,
              "NO_FOLLOW onto a symlink is TPDE_E_IO: %s", err);
        CHECK(strstr(err, eloop) != NULL, "ELOOP: %s", err);
        CHECK(tpde_decompress_file(packed, out, 0, 0, 0x80, NULL, NULL, err, sizeof err) == TPDE_E_INVALID,
              "unknown flags are TPDE_E_INVALID: %s", err);
        CHECK(tpde_decompress_file(packed, out, 0, 0, TPDE_FILE_NO_FOLLOW, NULL, NULL, err, sizeof err) == TPDE_OK,
              "NO_FOLLOW replaces a regular file: %s", err);
        unlink(link_path);
        CHECK(tpde_file_info(packed, 1, err, sizeof err) == TPDE_OK, "file_info: %s", err);
        CHECK(strstr(result(0), "\"segment_count\":1") != NULL, "segment_count in %s", doc);
        unlink(in);
        unlink(packed);
        unlink(out);
        rmdir(dir);
    }
    free(src);
    free(frame);
    free(back);

    bundle_checks();

    /* the chain policy: K = 3 keyframes every third checkpoint */
    const char *pol = "{\"keyframe_interval\": 3}";
    int32_t kf = -1, k = -1;
    CHECK(tpde_chain_forward(pol, strlen(pol), 0, &kf, &k, err, sizeof err) == TPDE_OK && kf == 1 && k == 3,
          "first is a keyframe: %s", err);
    CHECK(tpde_chain_forward(pol, strlen(pol), 2, &kf, NULL, err, sizeof err) == TPDE_OK && kf == 0, "delta");
    CHECK(tpde_chain_forward(pol, strlen(pol), 3, &kf, NULL, err, sizeof err) == TPDE_OK && kf == 1, "K-th");
    CHECK(tpde_chain_forward(NULL, 0, 5, &kf, &k, err, sizeof err) == TPDE_OK && kf == 0 && k == 10, "default");
    const char *bad = "{\"keyframe_interval\": 0}";
    CHECK(tpde_chain_forward(bad, strlen(bad), 1, &kf, &k, err, sizeof err) == TPDE_E_INVALID &&
          strstr(err, "keyframe_interval") != NULL, "K = 0 refused: %s", err);

    /* threads */
    pthread_t th[8];
    for (size_t i = 0; i < 8; i++) pthread_create(&th[i], NULL, worker, (void *)i);
    for (size_t i = 0; i < 8; i++) {
        void *r;
        pthread_join(th[i], &r);
        CHECK(r == NULL, "thread %zu", i);
    }
    int32_t threads = 0;
    CHECK(tpde_set_num_threads(1, err, sizeof err) == TPDE_OK && tpde_get_num_threads(&threads, err, sizeof err) == TPDE_OK &&
          threads == 1, "set_num_threads");
    CHECK(tpde_set_num_threads(0, err, sizeof err) == TPDE_OK, "set_num_threads(0)");

    if (failures) {
        fprintf(stderr, "abi_test: %d failed\n", failures);
        return 1;
    }
    printf("abi_test: all checks passed\n");
    return 0;
}
