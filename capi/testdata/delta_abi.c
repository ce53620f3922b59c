/* Checks the delta functions of include/tpde.h against the built library:
 * round trips, reference mismatch, inspect fields, the lossy contract and
 * argument errors. Built and run by delta_abi_test.go. Exits non-zero on
 * any failure. */
#include "tpde.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define CHECK(cond, ...)                                         \
    do {                                                         \
        if (!(cond)) {                                           \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                        \
            fprintf(stderr, "\n");                               \
            failures++;                                          \
        }                                                        \
    } while (0)

/* What tpde_inspect_delta said about a frame: the document it left for
 * this thread, NUL-terminated ("" on failure). */
static char doc[4096];
static int inspect(const void *frame, uint64_t len) {
    char err[256];
    uint64_t needed = 0;
    doc[0] = 0;
    if (tpde_inspect_delta(frame, len, err, sizeof err) != TPDE_OK ||
        tpde_result(0, doc, sizeof doc - 1, &needed, err, sizeof err) != TPDE_OK) {
        fprintf(stderr, "inspect: %s\n", err);
        return 0;
    }
    doc[needed] = 0;
    return 1;
}

/* The number, or true (1) / false (0), after "key": in doc (NAN if none). */
static double field(const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(doc, pat);
    if (p == NULL) return NAN;
    p += strlen(pat);
    if (strncmp(p, "true", 4) == 0) return 1;
    if (strncmp(p, "false", 5) == 0) return 0;
    return strtod(p, NULL);
}

static unsigned seed = 12345;
static float frand(void) {
    seed = seed * 1103515245u + 12345u;
    return ((float)(seed >> 8) / 16777216.0f - 0.5f);
}

int main(void) {
    enum { N = 40000 };
    char err[256];
    float *ref = malloc(N * sizeof(float)), *cur = malloc(N * sizeof(float));
    float *back = malloc(N * sizeof(float)), *recon = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++) {
        ref[i] = frand() * 0.04f;
        cur[i] = (i % 3 == 0) ? ref[i] + frand() * 1e-5f : ref[i];
    }
    uint64_t shape[2] = {N / 100, 100};
    uint64_t bound = 0, len = 0, out_len = 0;
    CHECK(tpde_encode_delta_bound(N * 4, TPDE_F32, 2, 0, &bound, err, sizeof err) == TPDE_OK, "bound: %s", err);
    unsigned char *frame = malloc(bound);

    /* Lossless round trip, every residual kind and flag combination. */
    int32_t kinds[3] = {TPDE_RESIDUAL_AUTO, TPDE_RESIDUAL_XOR, TPDE_RESIDUAL_DIFF};
    uint32_t flags[4] = {0, TPDE_DELTA_DENSE_ONLY, TPDE_DELTA_SPARSE_ONLY | TPDE_DELTA_NO_CONTEXT,
                         TPDE_DELTA_FULL_CONTEXT};
    for (int k = 0; k < 3; k++) {
        for (int f = 0; f < 4; f++) {
            int rc = tpde_encode_delta(cur, N * 4, ref, N * 4, NULL, 0, TPDE_F32, shape, 2, kinds[k], 0, 0,
                                       flags[f], 0, TPDE_EFFORT_BALANCED, 2, frame, bound, &len, recon,
                                       N * 4, err, sizeof err);
            CHECK(rc == TPDE_OK, "encode kind %d flags %u: %s", kinds[k], flags[f], err);
            CHECK(memcmp(recon, cur, N * 4) == 0, "lossless recon");
            rc = tpde_decode_delta(frame, len, ref, N * 4, NULL, 0, back, N * 4, 0, &out_len, err, sizeof err);
            CHECK(rc == TPDE_OK && out_len == N * 4, "decode: %s", err);
            CHECK(memcmp(back, cur, N * 4) == 0, "round trip kind %d flags %u", kinds[k], flags[f]);
        }
    }

    /* Inspect. */
    CHECK(tpde_encode_delta(cur, N * 4, ref, N * 4, NULL, 0, TPDE_F32, shape, 2, TPDE_RESIDUAL_DIFF, 0, 0, 0, 0,
                            0, 0, frame, bound, &len, NULL, 0, err, sizeof err) == TPDE_OK,
          "encode: %s", err);
    CHECK(inspect(frame, len), "inspect");
    CHECK(field("kind") == 1 && field("dtype") == TPDE_F32 && strstr(doc, "\"shape\":[400,100]") != NULL &&
              field("raw_size") == N * 4 && field("frame_size") == (double)len,
          "inspect frame fields: %s", doc);
    CHECK(field("residual") == TPDE_RESIDUAL_DIFF && field("lossy") == 0 && field("identical") == 0 &&
              field("needs_ref2") == 0,
          "inspect delta fields: %s", doc);
    CHECK(field("changed_elems") > 0 && field("changed_elems") <= (N + 2) / 3, "changed %g", field("changed_elems"));
    CHECK(field("sparsity") > 60 && field("sparsity") < 100, "sparsity %g", field("sparsity"));
    /* tpde_inspect and tpde_decode refuse delta frames: they need a reference. */
    CHECK(tpde_inspect(frame, len, err, sizeof err) == TPDE_E_UNSUPPORTED, "inspect keyframe-only");
    CHECK(tpde_decode(frame, len, back, N * 4, 0, &out_len, err, sizeof err) == TPDE_E_UNSUPPORTED,
          "decode keyframe-only");
    CHECK(strstr(err, "reference") != NULL, "message names the reference: %s", err);

    /* The wrong reference, or none, is refused with TPDE_E_REFERENCE. */
    float *other = malloc(N * sizeof(float));
    memcpy(other, ref, N * 4);
    other[N - 1] += 1.0f;
    CHECK(tpde_decode_delta(frame, len, other, N * 4, NULL, 0, back, N * 4, 0, &out_len, err, sizeof err) ==
              TPDE_E_REFERENCE,
          "wrong reference");
    CHECK(tpde_decode_delta(frame, len, ref, N * 4 - 4, NULL, 0, back, N * 4, 0, &out_len, err, sizeof err) ==
              TPDE_E_REFERENCE,
          "short reference");
    CHECK(tpde_decode_delta(frame, len, NULL, 0, NULL, 0, back, N * 4, 0, &out_len, err, sizeof err) ==
              TPDE_E_REFERENCE,
          "no reference");
    frame[len / 2] ^= 1;
    CHECK(tpde_decode_delta(frame, len, ref, N * 4, NULL, 0, back, N * 4, 0, &out_len, err, sizeof err) ==
              TPDE_E_CORRUPT,
          "corrupt frame");

    /* Prediction needs ref2. */
    CHECK(tpde_encode_delta(cur, N * 4, ref, N * 4, other, N * 4, TPDE_F32, shape, 2, TPDE_RESIDUAL_PRED, 0, 0, 0,
                            0, 0, 0, frame, bound, &len, NULL, 0, err, sizeof err) == TPDE_OK,
          "pred: %s", err);
    CHECK(inspect(frame, len) && field("needs_ref2") == 1, "needs_ref2: %s", doc);
    CHECK(tpde_decode_delta(frame, len, ref, N * 4, NULL, 0, back, N * 4, 0, &out_len, err, sizeof err) ==
              TPDE_E_REFERENCE,
          "pred without ref2");
    CHECK(tpde_decode_delta(frame, len, ref, N * 4, other, N * 4, back, N * 4, 0, &out_len, err, sizeof err) ==
                  TPDE_OK &&
              memcmp(back, cur, N * 4) == 0,
          "pred round trip: %s", err);
    CHECK(tpde_encode_delta(cur, N * 4, ref, N * 4, NULL, 0, TPDE_F32, shape, 2, TPDE_RESIDUAL_PRED, 0, 0, 0, 0,
                            0, 0, frame, bound, &len, NULL, 0, err, sizeof err) == TPDE_E_INVALID,
          "pred needs ref2 to encode");

    /* Identical tensor: at most 64 bytes. */
    CHECK(tpde_encode_delta(ref, N * 4, ref, N * 4, NULL, 0, TPDE_F32, shape, 2, TPDE_RESIDUAL_AUTO, 0, 0, 0, 0,
                            0, 0, frame, bound, &len, NULL, 0, err, sizeof err) == TPDE_OK,
          "identical: %s", err);
    CHECK(len <= 64, "identical frame is %llu bytes", (unsigned long long)len);
    CHECK(inspect(frame, len) && field("identical") == 1 && field("sparsity") == 100.0, "identical inspect: %s", doc);

    /* Lossy: bound, max error, closed-loop recon. */
    double thr = 0;
    CHECK(tpde_delta_threshold(cur, ref, N * 4, TPDE_F32, 90, &thr, err, sizeof err) == TPDE_OK && thr > 0,
          "threshold: %s", err);
    for (int q = 0; q <= 8; q += 4) {
        int rc = tpde_encode_delta(cur, N * 4, ref, N * 4, NULL, 0, TPDE_F32, shape, 2, TPDE_RESIDUAL_AUTO, thr,
                                   q, 0, 0, 0, 0, frame, bound, &len, recon, N * 4, err, sizeof err);
        CHECK(rc == TPDE_OK, "lossy q%d: %s", q, err);
        CHECK(inspect(frame, len), "inspect lossy");
        double max_error = field("max_error");
        CHECK(field("lossy") == 1 && field("bound") == thr && max_error <= thr && field("quant_bits") == q,
              "lossy fields: %s", doc);
        CHECK(tpde_decode_delta(frame, len, ref, N * 4, NULL, 0, back, N * 4, 0, &out_len, err, sizeof err) ==
                  TPDE_OK,
              "lossy decode: %s", err);
        CHECK(memcmp(back, recon, N * 4) == 0, "recon is what decodes");
        double worst = 0;
        for (int i = 0; i < N; i++) {
            double e = fabs((double)back[i] - (double)cur[i]);
            if (e > worst) worst = e;
        }
        CHECK(worst <= thr && worst == max_error, "max error %g vs %g", worst, max_error);
    }

    /* Lossy is for floats only; bad arguments are TPDE_E_INVALID. */
    int32_t *ints = calloc(N, sizeof(int32_t));
    CHECK(tpde_encode_delta(ints, N * 4, ints, N * 4, NULL, 0, TPDE_I32, shape, 2, TPDE_RESIDUAL_AUTO, 0.5, 0, 0,
                            0, 0, 0, frame, bound, &len, NULL, 0, err, sizeof err) == TPDE_E_INVALID,
          "lossy int");
    CHECK(tpde_encode_delta(cur, N * 4, ref, N * 4, NULL, 0, TPDE_F32, shape, 2, 7, 0, 0, 0, 0, 0, 0, frame, bound,
                            &len, NULL, 0, err, sizeof err) == TPDE_E_INVALID,
          "bad kind");
    CHECK(tpde_encode_delta(cur, N * 4, ref, N * 4, NULL, 0, TPDE_F32, shape, 2, 0, 0, 0,
                            TPDE_DELTA_DENSE_ONLY | TPDE_DELTA_SPARSE_ONLY, 0, 0, 0, frame, bound, &len, NULL, 0,
                            err, sizeof err) == TPDE_E_INVALID,
          "bad flags");
    CHECK(tpde_encode_delta(cur, N * 4, ref, N * 4 - 4, NULL, 0, TPDE_F32, shape, 2, 0, 0, 0, 0, 0, 0, 0, frame,
                            bound, &len, NULL, 0, err, sizeof err) == TPDE_E_INVALID,
          "short reference when encoding");
    CHECK(tpde_encode_delta(cur, N * 4, ref, N * 4, NULL, 0, TPDE_F32, shape, 2, 0, 0, 0, 0, 0, 0, 0, frame, 10,
                            &len, NULL, 0, err, sizeof err) == TPDE_E_BUFFER_TOO_SMALL,
          "small dst");
    CHECK(tpde_delta_threshold(ints, ints, N * 4, TPDE_I32, 50, &thr, err, sizeof err) == TPDE_E_INVALID,
          "threshold of ints");

    /* A keyframe through the delta entry points. */
    uint64_t kb = 0;
    tpde_encode_bound(N * 4, TPDE_F32, 2, 0, &kb, err, sizeof err);
    unsigned char *key = malloc(kb);
    CHECK(tpde_encode(cur, N * 4, TPDE_F32, shape, 2, 0, 0, 0, key, kb, &len, err, sizeof err) == TPDE_OK, "key");
    CHECK(inspect(key, len) && field("kind") == 0 && field("residual") == -1, "inspect keyframe: %s", doc);
    CHECK(tpde_decode_delta(key, len, NULL, 0, NULL, 0, back, N * 4, 0, &out_len, err, sizeof err) == TPDE_OK &&
              memcmp(back, cur, N * 4) == 0,
          "keyframe through decode_delta");

    free(ref), free(cur), free(back), free(recon), free(frame), free(other), free(ints), free(key);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("delta abi: all checks passed\n");
    return 0;
}
