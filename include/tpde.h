/*
 * tpde.h - the C ABI of libtpde, the tpde checkpoint codec.
 *
 * This header is written by hand and is the stable contract; the header that
 * `go build -buildmode=c-shared` emits beside the library is not. It is in
 * sections, in the order of capi/'s files (one file per section), each over
 * the Go facade core/api: statuses, the library, frames, delta frames,
 * files, bundles, chains, the store, store readers.
 *
 * The result convention, which every function follows:
 *
 *  - Every function returns an int status, TPDE_OK (0) or one of the
 *    TPDE_E_* codes below, and takes `char *err, size_t err_len` as its last
 *    two arguments. On failure a NUL-terminated, one-line message naming
 *    what failed is written there (truncated to err_len - 1 bytes). err may
 *    be NULL. The message belongs to that call alone, so concurrent calls
 *    from many threads never see each other's messages. The two exceptions
 *    are tpde_version and tpde_abi_version, which cannot fail and are what
 *    a binding calls before it trusts anything else.
 *  - Scalars (a handle, a length, a bound, a count) come back through typed
 *    out-pointers, written on success (and, for a TPDE_E_BUFFER_TOO_SMALL,
 *    with the size needed).
 *  - Every structured result (a description, a list, a record) is one JSON
 *    document (UTF-8, not NUL-terminated), read with tpde_result. The call
 *    keeps it where it acted: in the handle it acted on, or the handle it
 *    opened; a call that acts on no handle (tpde_inspect, tpde_file_info,
 *    ...) keeps it for the calling thread, as errno is kept, and
 *    tpde_result reads it with handle 0. The document stays, to be read as
 *    often as asked, until the next call there that leaves one; a failed
 *    call leaves the previous one. So a call with side effects (a commit)
 *    never has to be repeated to read what it did. Each function's comment
 *    says what its document holds ("Result: ..."). A "table" in a document
 *    is an object of columns, one array per field, entry i at index i of
 *    each: {"name": ["a", "b"], "kind": [1, 0]}. The bundle documents,
 *    whose lists have an entry per tensor of a whole checkpoint, use
 *    tables; other lists are arrays of objects.
 *  - Inputs cross as they are: a tensor is (pointer, length, dtype, shape),
 *    read in place during the call, once, never copied or kept; arrays of
 *    tensors are arrays of the structs below; options are codes, flags or
 *    small JSON documents (config, tags, parent), which are parsed
 *    strictly: an unknown or repeated key is TPDE_E_INVALID, never ignored.
 *
 * Why JSON documents rather than structs: one rule for every structured
 * result replaces three (structs filled in place, JSON grown into a
 * caller's buffer, JSON kept in a handle), and a document can gain a field
 * without an ABI version bump, which a struct cannot. The cost is a
 * second call and a parse; docs/ARCHITECTURE.md ("The C ABI") weighs it
 * against the structs it replaced.
 *
 * Conventions that hold for every function:
 *
 *  - All functions are safe to call from many threads at once; a handle
 *    is used by one thread at a time (a second waits), except an opened
 *    bundle, which many threads may decode from at once.
 *  - The library keeps no pointer the caller passed after the call returns
 *    (except tpde_bundle_open, which reads its bundle in place until
 *    tpde_bundle_close), and returns no pointer into its own memory (except
 *    tpde_version, which returns a static string).
 *  - No Go panic crosses this boundary, from any thread the library
 *    starts: an unexpected internal failure is returned as
 *    TPDE_E_INTERNAL. Memory that becomes unreadable while the library
 *    reads it (a memory-mapped file truncated by another process) is
 *    TPDE_E_IO, not a crash.
 *  - A TPDE_E_IO message that has an operating-system error number ends
 *    with " [errno N]", N the decimal errno value (ENOENT, ENOSPC, ...).
 *  - Do not call the library in a child made by fork() of a process that
 *    had already called it: its Go runtime's threads stay in the parent,
 *    and calls in the child may hang. Start workers with exec (Python:
 *    the 'spawn' or 'forkserver' start method); a child of a process that
 *    never called the library may use it freely. The Python package
 *    enforces this (tpde.ForkedProcessError).
 *  - Files written (tpde_compress_file, tpde_decompress_file, the bundle
 *    writer) are written to a temporary file in the destination's
 *    directory, fsynced and renamed into place. On Linux the temporary
 *    file is unnamed (O_TMPFILE), so a killed process leaves nothing;
 *    elsewhere it is named ".<name>.tpde-tmp-<pid>-<hex>" and locked, and
 *    later writes in that directory remove those whose writer is gone. New
 *    files get 0666 less the umask; a replaced file keeps its mode; a
 *    compressed or restored file never gets a permission bit its source
 *    lacks. A destination that is a symlink is written through (its
 *    target is replaced); a directory, device or FIFO is refused. The
 *    file functions' TPDE_FILE_* flags refuse an existing destination or
 *    a symlink instead.
 *  - Buffers are raw bytes in the tensor's native little-endian layout,
 *    C-contiguous (row-major).
 *
 * The byte format of frames and of compressed files is in docs/FORMAT.md.
 */
#ifndef TPDE_H
#define TPDE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================
 * Statuses (capi/status.go)
 * ====================================================================== */

#define TPDE_OK 0
#define TPDE_E_INVALID 1          /* bad argument: dtype, shape/size mismatch, NULL pointer */
#define TPDE_E_CORRUPT 2          /* input is not a valid tpde object: checksum, truncation, bad header */
#define TPDE_E_UNSUPPORTED 3      /* valid but unreadable here: newer major version, unknown kind */
#define TPDE_E_BUFFER_TOO_SMALL 4 /* output buffer too small; see the bound functions */
#define TPDE_E_IO 5               /* the operating system refused a file operation */
#define TPDE_E_INTERNAL 6         /* a bug in libtpde; the message says where */
#define TPDE_E_REFERENCE 7        /* a delta frame was given a reference tensor other than the one it
                                     was encoded against (wrong size or checksum), or none */
#define TPDE_E_LIMIT 8            /* decoding would exceed the caller's output limit (max_output) */
#define TPDE_E_CANCELLED 9        /* the caller's cancel flag was set; nothing was written */

/* ======================================================================
 * The library (capi/library.go)
 * ====================================================================== */

/* Bumped when a function's signature or meaning changes. */
#define TPDE_ABI_VERSION 13

#ifndef TPDE_NO_PROTOTYPES

/* Library version string, e.g. "0.1.0". Static; never free it. */
const char *tpde_version(void);

/* TPDE_ABI_VERSION of the loaded library. */
int tpde_abi_version(void);

/* The default worker count of calls that pass nthreads = 0.
 * n <= 0 restores the default: the number of CPUs. */
int tpde_set_num_threads(int32_t n, char *err, size_t err_len);
int tpde_get_num_threads(int32_t *n, char *err, size_t err_len);

/* Copy the JSON document the last call on handle left (handle 0: the last
 * call of this thread that acted on no handle) into out: at most cap bytes,
 * not NUL-terminated; *needed is set to its length. When it does not fit,
 * nothing is copied and the status is TPDE_E_BUFFER_TOO_SMALL: call again
 * with room for *needed bytes (the document stays). A handle that is not
 * open, or handle 0 on a thread that has no document, is TPDE_E_INVALID. */
int tpde_result(uint64_t handle, char *out, uint64_t cap, uint64_t *needed, char *err, size_t err_len);

#endif /* TPDE_NO_PROTOTYPES */

/* ======================================================================
 * Frames (capi/frames.go; docs/FORMAT.md, keyframes)
 * ====================================================================== */

/* Element types. The codes are stored in frames and never change meaning. */
#define TPDE_BOOL 0
#define TPDE_U8 1
#define TPDE_I8 2
#define TPDE_U16 3
#define TPDE_I16 4
#define TPDE_U32 5
#define TPDE_I32 6
#define TPDE_U64 7
#define TPDE_I64 8
#define TPDE_F16 9
#define TPDE_BF16 10
#define TPDE_F32 11
#define TPDE_F64 12
#define TPDE_F8_E4M3 13
#define TPDE_F8_E5M2 14

/* Encoder effort: which stream coders are tried per chunk (docs/FORMAT.md). */
#define TPDE_EFFORT_BALANCED 0 /* raw, rle, huff0; zstd where it can plausibly win */
#define TPDE_EFFORT_FAST 1     /* raw, rle, huff0 */
#define TPDE_EFFORT_MAX 2      /* every coder on every stream */

#define TPDE_MAX_NDIM 32

#ifndef TPDE_NO_PROTOTYPES

/* Largest frame tpde_encode can write for raw_size bytes of dtype with ndim
 * dimensions. chunk_elems 0 means the default chunk size. */
int tpde_encode_bound(uint64_t raw_size, int32_t dtype, int32_t ndim, uint32_t chunk_elems,
                      uint64_t *bound, char *err, size_t err_len);

/* Compress one tensor. src holds src_len bytes: the product of shape[0..ndim)
 * elements of dtype. dst must have room for tpde_encode_bound bytes.
 * chunk_elems 0: default. effort: TPDE_EFFORT_*. nthreads 0: the default.
 * On success *out_len is the frame's length. */
int tpde_encode(const void *src, uint64_t src_len, int32_t dtype, const uint64_t *shape, int32_t ndim,
                uint32_t chunk_elems, int32_t effort, int32_t nthreads, void *dst, uint64_t dst_cap,
                uint64_t *out_len, char *err, size_t err_len);

/* Decompress one frame (exactly src_len bytes) into dst. dst_cap must be at
 * least the frame's raw_size (see tpde_inspect). On success *out_len is the
 * number of bytes written. Every chunk is checksummed before and after
 * decoding; on any failure the contents of dst are unspecified. */
int tpde_decode(const void *src, uint64_t src_len, void *dst, uint64_t dst_cap, int32_t nthreads,
                uint64_t *out_len, char *err, size_t err_len);

/* Read and validate a keyframe's header and chunk table without decoding
 * (a delta frame is TPDE_E_UNSUPPORTED: see tpde_inspect_delta). Result,
 * for this thread: {"version_major", "version_minor", "kind": 0, "dtype": a
 * TPDE_* code, "shape": [dims], "raw_size": bytes the decoded tensor
 * occupies, "frame_size": bytes of the frame itself, "chunk_elems",
 * "nchunks"}. */
int tpde_inspect(const void *src, uint64_t src_len, char *err, size_t err_len);

/* tpde_inspect's dtype, shape and raw_size, written to the caller's
 * variables instead of a document: what a binding needs to allocate the
 * tensor before tpde_decode, without the document's cost per call. shape
 * must have room for TPDE_MAX_NDIM entries; *ndim of them are written. The
 * frame is validated as tpde_inspect validates it. */
int tpde_frame_shape(const void *src, uint64_t src_len, int32_t *dtype, int32_t *ndim, uint64_t *shape,
                     uint64_t *raw_size, char *err, size_t err_len);

/* The sum, over the byte streams tpde splits this tensor into, of each
 * stream's order-0 entropy, in bits: the floor for any coder that codes the
 * streams independently, byte by byte, with one model per stream. Used by
 * the benchmarks to print the bound beside each ratio. */
int tpde_entropy_bound(const void *src, uint64_t src_len, int32_t dtype, double *bits, char *err,
                       size_t err_len);

#endif /* TPDE_NO_PROTOTYPES */

/* ======================================================================
 * Delta frames (capi/delta.go; docs/FORMAT.md, delta frames)
 * ====================================================================== */

/* A tensor coded against a reference tensor of the same dtype and shape
 * (frame kind 1). Residual kinds: */
#define TPDE_RESIDUAL_AUTO -1 /* tpde_encode_delta picks from a sample (PRED only given ref2) */
#define TPDE_RESIDUAL_XOR 0   /* cur ^ ref, on bit patterns */
#define TPDE_RESIDUAL_DIFF 1  /* zigzag(cur - ref), bit patterns as integers, wrapping */
#define TPDE_RESIDUAL_PRED 2  /* zigzag(cur - (ref + (ref - ref2) / 2)), needs ref2 */

/* Flags of tpde_encode_delta. With none (0) the encoder chooses per chunk
 * between the dense and the sparse coding, whichever is smaller, and, at
 * TPDE_EFFORT_BALANCED and TPDE_EFFORT_MAX, how many exponent contexts to
 * use (where they are estimated to make the frame at least 8% smaller, 3%
 * at MAX; they halve encoding and decoding speed where used). */
#define TPDE_DELTA_DENSE_ONLY 1u   /* never the sparse coding */
#define TPDE_DELTA_SPARSE_ONLY 2u  /* the sparse coding ("elias_delta_zstd": positions of the changed
                                      elements, then their residuals) for every changed chunk */
#define TPDE_DELTA_NO_CONTEXT 4u   /* one context: no grouping by the reference's exponent */
#define TPDE_DELTA_FULL_CONTEXT 8u /* always 16 exponent contexts (float dtypes) */

#ifndef TPDE_NO_PROTOTYPES

/* Largest frame tpde_encode_delta can write for raw_size bytes of dtype with
 * ndim dimensions (chunk_elems 0: the default). tpde_encode_bound does not
 * bound delta frames. */
int tpde_encode_delta_bound(uint64_t raw_size, int32_t dtype, int32_t ndim, uint32_t chunk_elems,
                            uint64_t *bound, char *err, size_t err_len);

/* Code one tensor as a delta frame against a reference. src and ref (and
 * ref2, which may be NULL unless residual_kind is TPDE_RESIDUAL_PRED; with
 * TPDE_RESIDUAL_AUTO a given ref2 makes prediction a candidate) hold
 * src_len bytes each: the product of shape[0..ndim) elements of dtype; the
 * caller vouches that the references have that dtype and shape. The frame
 * records the references' CRC32C so that decoding with another reference
 * fails (TPDE_E_REFERENCE).
 *
 * threshold 0 is lossless (the default everywhere). threshold > 0 (float
 * dtypes only, else TPDE_E_INVALID) makes the frame lossy: an element within
 * threshold of its reference element (|cur - ref| as real numbers) is
 * replaced by it, so every decoded element is within threshold of src.
 * quant_bits 8 or 4 (with threshold > 0; F16, BF16, F32, F64) additionally
 * quantizes the other residuals to int8/int4 codes of a per-chunk scale,
 * keeping the same bound (elements it cannot keep within it stay exact).
 * NaNs and infinities are never approximated. flags: TPDE_DELTA_*.
 * chunk_elems 0: default; effort: TPDE_EFFORT_* (MAX also tries every
 * stream coder and sparse chunks with up to half the elements changed: the
 * smallest frames, slower to write and read; FAST never weighs exponent
 * contexts); nthreads 0: default.
 * dst must have room for tpde_encode_delta_bound bytes; *out_len receives
 * the frame's length. recon, if not NULL, must have room for src_len bytes
 * (recon_cap) and receives what tpde_decode_delta will return: src itself
 * when lossless. For a chain of lossy checkpoints, code each one against the
 * previous recon (closed loop): the error then stays within the bound at
 * every step instead of accumulating. recon may be src. */
int tpde_encode_delta(const void *src, uint64_t src_len, const void *ref, uint64_t ref_len,
                      const void *ref2, uint64_t ref2_len, int32_t dtype, const uint64_t *shape,
                      int32_t ndim, int32_t residual_kind, double threshold, int32_t quant_bits,
                      uint32_t flags, uint32_t chunk_elems, int32_t effort, int32_t nthreads,
                      void *dst, uint64_t dst_cap, uint64_t *out_len, void *recon,
                      uint64_t recon_cap, char *err, size_t err_len);

/* Decode one frame (exactly src_len bytes) into dst (dst_cap >= raw_size).
 * A delta frame needs the reference it was coded against (ref, ref_len)
 * and, when tpde_inspect_delta reports needs_ref2, the second one; a
 * missing reference, or one of another size or checksum, is refused with
 * TPDE_E_REFERENCE (never garbage: the checksum is checked before success
 * is returned). ref2 may be NULL otherwise and is then ignored. A keyframe
 * decodes as with tpde_decode (the references are ignored). dst must not
 * overlap the references. On success *out_len is raw_size; on any failure
 * dst's contents are unspecified. */
int tpde_decode_delta(const void *src, uint64_t src_len, const void *ref, uint64_t ref_len,
                      const void *ref2, uint64_t ref2_len, void *dst, uint64_t dst_cap,
                      int32_t nthreads, uint64_t *out_len, char *err, size_t err_len);

/* Read and validate a frame of either kind without decoding it. Result,
 * for this thread: tpde_inspect's fields ("kind" 0 or 1), plus "residual"
 * (TPDE_RESIDUAL_XOR/DIFF/PRED; -1 for a keyframe), "identical" (every
 * residual is zero: a header-only frame), "lossy" (elements are within
 * "bound" of the input, not exact), "quant_bits" (0, 8 or 4), "ref_crc"
 * and "ref2_crc" (CRC32C of the references), "needs_ref2", "bound" (the
 * lossy error bound; 0 when lossless), "max_error" (the largest |input -
 * decoded| the encoder measured), "changed_elems" (elements whose residual
 * is not zero), "sparsity" (percent of elements whose residual is zero:
 * 100 for an identical or empty tensor, 0 for a keyframe), and chunk
 * counts "chunks_copy" (equal to the reference), "chunks_dense",
 * "chunks_sparse" and, of those two, "chunks_quantized". A keyframe's
 * delta fields are 0 or false. */
int tpde_inspect_delta(const void *src, uint64_t src_len, char *err, size_t err_len);

/* An adaptive lossy threshold: the given percentile (0 to 100) of
 * |src - ref| over the elements of a float tensor (as real numbers; NaN and
 * infinite differences are left out), e.g. 50 gives a threshold that drops
 * about half of the elements. Exact (nearest rank). */
int tpde_delta_threshold(const void *src, const void *ref, uint64_t len, int32_t dtype,
                         double percentile, double *threshold, char *err, size_t err_len);

#endif /* TPDE_NO_PROTOTYPES */

/* ======================================================================
 * Files (capi/files.go; docs/FORMAT.md, files)
 * ====================================================================== */

/* Flags of tpde_compress_file and tpde_decompress_file, for dst_path. */
#define TPDE_FILE_NO_REPLACE 1u /* dst_path must not exist: anything there (a file, a symlink
                                   even dangling, a directory) is TPDE_E_IO with errno EEXIST,
                                   before the input is read. The output is then published with
                                   link(2), which cannot replace a name, not rename(2): a file
                                   another process creates at dst_path meanwhile is refused
                                   the same way, not replaced. (On a filesystem with neither
                                   hard links nor RENAME_NOREPLACE the last check is made just
                                   before the rename.) A symlink is never followed. */
#define TPDE_FILE_NO_FOLLOW 2u  /* a dst_path that is a symlink is TPDE_E_IO with errno ELOOP
                                   instead of written through; one that appears while the
                                   output is written is itself replaced by the rename, and the
                                   file it points to is untouched. */

/* TPDE_TORCH_HINTS: the JSON a caller passes for a torch.save file, with
 * one of two members (Go never reads pickles; the caller does):
 *   {"torch_zip": {storage key: dtype name}}   the dtype of each storage of
 *       a torch.save zip, from its data.pkl, optionally with
 *       "torch_zip_names": {storage key: region name} (the state-dict path
 *       of its first tensor; if any is empty, repeated or too long, every
 *       storage keeps the name data/<key>);
 *   {"torch_legacy": {"data_start": N, "storages": [{"key": k, "name": n,
 *       "dtype": d, "count": c, "element_size": e}, ...]}}   for a legacy
 *       (pre-zip) file: the offset just past its keys pickle, and each
 *       storage in the keys list's order, with its region name, dtype name
 *       ("" for bytes kept verbatim), element count and element size
 *       (docs/FORMAT.md, "Legacy torch files").
 * The library trusts none of it: a file whose bytes disagree is coded as
 * bytes, which is still lossless. */

#ifndef TPDE_NO_PROTOTYPES

/* Compress a file into a tpde file (docs/FORMAT.md, "Files"): a
 * .safetensors file tensor by tensor, a torch.save file (zip or legacy)
 * storage by storage when torch_hints (TPDE_TORCH_HINTS above, read from
 * its pickles by the caller; NULL for any other file) says what they hold,
 * any other file as bytes. A regular input is memory-mapped; anything else
 * that can be read (a pipe, FIFO, /dev/stdin, a /proc file) is first
 * copied to an unnamed temporary file in dst_path's directory. The output
 * is written atomically (see the conventions above). flags: TPDE_FILE_*;
 * any other bit is TPDE_E_INVALID. If progress is not NULL, the library
 * stores there, atomically, the count of input bytes processed so far, so
 * another thread may poll it for a progress bar. If cancel is not NULL,
 * the library polls it (read atomically) between chunks; once it is
 * non-zero the call stops with TPDE_E_CANCELLED and leaves no output. */
int tpde_compress_file(const char *src_path, const char *dst_path, int32_t nthreads,
                       const char *torch_hints, uint64_t torch_hints_len, uint32_t flags,
                       uint64_t *progress, const int32_t *cancel, char *err, size_t err_len);

/* Restore the original file, byte for byte, from a tpde file (or from a
 * file holding one frame); written atomically like tpde_compress_file.
 * max_output: 0 for no limit, else the most bytes the restored file may
 * have; a larger one is refused with TPDE_E_LIMIT before anything is
 * written. flags as for tpde_compress_file; progress counts output bytes;
 * cancel as for tpde_compress_file. */
int tpde_decompress_file(const char *src_path, const char *dst_path, int32_t nthreads,
                         uint64_t max_output, uint32_t flags, uint64_t *progress,
                         const int32_t *cancel, char *err, size_t err_len);

/* Describe a tpde file (or a raw frame file). Every segment's checksum is
 * verified whether listed or not. Result, for this thread: the container
 * fields, segment_count, and per segment (the first max_segments of them;
 * 0 means 10000) kind, sizes and, for tensors, name, dtype and shape. */
int tpde_file_info(const char *path, uint32_t max_segments, char *err, size_t err_len);

#endif /* TPDE_NO_PROTOTYPES */

/* ======================================================================
 * Bundles (capi/bundles.go; docs/FORMAT.md, bundles)
 * ====================================================================== */

/* A bundle holds the named tensors of one checkpoint, each a keyframe or a
 * delta frame against the tensor of the same name in a reference
 * checkpoint, plus a JSON metadata object. */

/* One tensor to code into a bundle, read during the call only. */
typedef struct tpde_bundle_item {
    const char *name;       /* UTF-8, not NUL-terminated; unique in the bundle */
    uint64_t name_len;      /* 1..65535 */
    int32_t dtype;          /* TPDE_* element type */
    int32_t ndim;           /* 0..32 */
    const uint64_t *shape;  /* ndim dimensions (may be NULL when ndim is 0) */
    const void *data;       /* the tensor, C-contiguous */
    uint64_t nbytes;
    const void *ref;        /* NULL: a keyframe; else the reference (same dtype and shape) */
    uint64_t ref_nbytes;
    const void *ref2;       /* NULL, or the older reference (see tpde_encode_delta) */
    uint64_t ref2_nbytes;
    int32_t residual_kind;  /* TPDE_RESIDUAL_* (delta items) */
    uint32_t flags;         /* TPDE_DELTA_* (delta items) */
    double threshold;       /* 0: lossless; > 0 lossy, float dtypes, delta items only */
    int32_t quant_bits;     /* 0, 8 or 4 (with threshold > 0) */
    int32_t reserved;       /* must be 0 */
    void *recon;            /* NULL, or nbytes of room for what a decoder will get back */
    uint64_t recon_cap;
} tpde_bundle_item;

/* One tensor to decode from a bundle. */
typedef struct tpde_bundle_out {
    uint64_t index;         /* entry number (the order of tpde_bundle_open's "entries") */
    void *dst;
    uint64_t dst_cap;       /* >= the entry's raw_size */
    const void *ref;        /* the reference tensor for a delta entry; ignored for keyframes */
    uint64_t ref_nbytes;
    const void *ref2;       /* the second reference when the entry needs_ref2, else NULL */
    uint64_t ref2_nbytes;
} tpde_bundle_out;

#ifndef TPDE_NO_PROTOTYPES

/* Largest bundle these items make with meta_len bytes of metadata; with
 * meta_len 0, room that always suffices for their tpde_bundle_writer_add. */
int tpde_bundle_bound(const tpde_bundle_item *items, uint64_t n, uint64_t meta_len,
                      uint64_t *bound, char *err, size_t err_len);

/* The adaptive lossy thresholds of n delta items, as tpde_delta_threshold
 * gives them (the percentile of |data - ref|), into thresholds[0..n): one
 * call for the tensors of a checkpoint, several at a time on nthreads
 * threads (0: the default). Every item needs a reference (ref, ref_nbytes
 * = nbytes) and a float dtype; the other delta fields are ignored. An
 * error names the tensor. (One number per input item, into the caller's
 * array, as a tensor's bytes are: a scalar result, not a document.) */
int tpde_bundle_thresholds(const tpde_bundle_item *items, uint64_t n, double percentile,
                           int32_t nthreads, double *thresholds, char *err, size_t err_len);

/* Write a bundle across calls: open, then add tensors (callable many
 * times), then close with the metadata, which may thus say how the
 * tensors were coded. Small tensors are coded several at a time on
 * nthreads threads (0: the default), large ones one at a time with their
 * chunks in parallel; the bytes do not depend on nthreads or on how the
 * tensors are split between add calls. An error names the tensor that
 * failed. A handle is used by one thread at a time.
 *
 * open with a path writes to a temporary file beside it (add and close
 * then take no dst: NULL, 0); close with commit = 1 appends meta (a UTF-8
 * JSON object, meta_len bytes; 0 bytes is {}) and the index, fsyncs and
 * renames the file over path.
 *
 * open with path NULL writes into the caller's memory, piece by piece:
 * each add writes its frames (the first add's bytes begin with the
 * preamble) to dst and sets *out_len to their length, and needs dst_cap >=
 * tpde_bundle_bound(items, n, 0) (a smaller dst is refused before anything
 * is coded); close with commit = 1 writes the rest (the metadata, index
 * and trailer) to dst. The bundle is the concatenation of the pieces, in
 * call order; the library keeps no pointer to them. If close's dst is too
 * small, it returns TPDE_E_BUFFER_TOO_SMALL, sets *out_len to the
 * bundle's total length, and the writer stays open for another close.
 *
 * add's result, in the writer: {"items": a table, one entry per item in
 * order, of "frame_size", "residual" (the TPDE_RESIDUAL_* kind chosen; -1
 * for a keyframe), "identical" (equal to its reference: a header-only
 * frame), "max_error" (largest |src - decoded| of a lossy item; else 0)
 * and "changed_elems" (delta items: elements with a non-zero residual)}.
 *
 * close sets *out_len (may be NULL) to the bundle's total length. Closing
 * with commit = 0, or any failure of close other than that too-small dst,
 * abandons the bundle (removing a temporary file) and releases the handle;
 * after a failed add, close fails with that add's error. */
int tpde_bundle_writer_open(const char *path, uint64_t *handle, char *err, size_t err_len);
int tpde_bundle_writer_add(uint64_t handle, const tpde_bundle_item *items, uint64_t n, int32_t effort,
                           int32_t nthreads, void *dst, uint64_t dst_cap, uint64_t *out_len,
                           char *err, size_t err_len);
int tpde_bundle_writer_close(uint64_t handle, const char *meta, uint64_t meta_len, int32_t commit,
                             void *dst, uint64_t dst_cap, uint64_t *out_len, char *err,
                             size_t err_len);

/* Open a bundle (exactly src_len bytes) for reading: its preamble,
 * trailer, index, metadata and every frame's header and chunk table are
 * validated once, here; *handle receives a handle for tpde_bundle_decode.
 * The library reads src in place until tpde_bundle_close: it must stay
 * valid and unchanged until then. Result, in the new handle: {"size":
 * bytes of the bundle, "version_minor", "entries": a table, one entry per
 * tensor in index order, of "name", "kind" (0: keyframe, 1: delta frame),
 * "dtype", "shape", "raw_size" (bytes the decoded tensor occupies),
 * "frame_size", "offset" (of the frame, from the start of the bundle),
 * "residual" (-1 for a keyframe), "identical", "lossy", "bound",
 * "max_error", "changed_elems" and "needs_ref2", "meta": the metadata
 * object, verbatim}. */
int tpde_bundle_open(const void *src, uint64_t src_len, uint64_t *handle, char *err, size_t err_len);

/* Decode n entries of an opened bundle into their destinations, small ones
 * several at a time. A wrong or missing reference is TPDE_E_REFERENCE. An
 * error names the tensor; on failure the destinations' contents are
 * unspecified. Many threads may decode from one opened bundle at once. */
int tpde_bundle_decode(uint64_t handle, const tpde_bundle_out *outs, uint64_t n, int32_t nthreads,
                       char *err, size_t err_len);

/* Release an opened bundle's handle (its src may then go). */
int tpde_bundle_close(uint64_t handle, char *err, size_t err_len);

#endif /* TPDE_NO_PROTOTYPES */

/* ======================================================================
 * Chains (capi/chain.go; docs/FORMAT.md section 6.14)
 * ====================================================================== */

/* One chain and keyframe policy bounds every series, forward (the bundle
 * compressor) or reverse (the store): no decode of one tensor walks more
 * than K frames. */

#ifndef TPDE_NO_PROTOTYPES

/* policy is a JSON object {"keyframe_interval": K (1..1000, default 10),
 * "reference": "previous" | "base" (default "previous")}; NULL or length 0
 * is the default. A bad policy is TPDE_E_INVALID, naming the field.
 *
 * On success *keyframe is 1 when the next checkpoint of a forward chain,
 * since_keyframe checkpoints after its last keyframe (0: none yet), must be
 * a keyframe, else 0; *interval is the K in effect. Either may be NULL. */
int tpde_chain_forward(const char *policy, uint64_t policy_len, int64_t since_keyframe, int32_t *keyframe,
                       int32_t *interval, char *err, size_t err_len);

#endif /* TPDE_NO_PROTOTYPES */

/* ======================================================================
 * The store (capi/store.go; docs/FORMAT.md, stores)
 * ====================================================================== */

/* A store is a directory of checkpoints sharing content-addressed objects,
 * in named runs (the main run: run NULL or ""). A store handle holds the
 * open store (and, when opened to write, its one-writer lock) and at most
 * one checkpoint being added. */

/* tpde_store_open's write argument, besides 0 (read). */
#define TPDE_STORE_WRITE 1
#define TPDE_STORE_STAGE 2

/* The counts tpde_store_transfer writes, by index: the S3 requests the
 * handle's client sent since tpde_store_open, by kind (every attempt
 * counts, a retried request twice, since every attempt is billed), the
 * body bytes it sent and received (headers not counted), and the objects
 * its adds handed to the uploaders (queued) and the bucket has taken
 * (uploaded), with their bytes. Indices are only ever appended. */
#define TPDE_TRANSFER_GET 0               /* GetObject, whole or one range of a parallel download */
#define TPDE_TRANSFER_PUT 1               /* PutObject (a commit's conditional PUT included) */
#define TPDE_TRANSFER_HEAD 2              /* HeadObject */
#define TPDE_TRANSFER_LIST 3              /* ListObjectsV2 and the listings of uploads and parts */
#define TPDE_TRANSFER_DELETE 4            /* DeleteObject */
#define TPDE_TRANSFER_PARTS 5             /* UploadPart of a multipart upload */
#define TPDE_TRANSFER_MULTIPART 6         /* create, complete and abort of a multipart upload */
#define TPDE_TRANSFER_OTHER 7             /* any other request */
#define TPDE_TRANSFER_BYTES_SENT 8
#define TPDE_TRANSFER_BYTES_RECEIVED 9
#define TPDE_TRANSFER_QUEUED_OBJECTS 10
#define TPDE_TRANSFER_QUEUED_BYTES 11
#define TPDE_TRANSFER_UPLOADED_OBJECTS 12 /* never more than queued */
#define TPDE_TRANSFER_UPLOADED_BYTES 13
#define TPDE_TRANSFER_COUNT 14

/* One tensor of a state dict handed to tpde_store_add_state_dict: read
 * during the call only; the library lays the file out (docs/FORMAT.md,
 * state dict files). */
typedef struct tpde_store_tensor {
    const char *name;      /* NUL-terminated UTF-8 */
    int32_t dtype;         /* a TPDE_* element type */
    int32_t ndim;          /* 0..32 */
    const uint64_t *shape; /* ndim entries */
    const void *data;      /* nbytes bytes */
    uint64_t nbytes;
} tpde_store_tensor;

#ifndef TPDE_NO_PROTOTYPES

/* Open the store at path: write 0 reads; TPDE_STORE_WRITE creates it if
 * missing or empty, and locks it; TPDE_STORE_STAGE opens it for one
 * participant of a multi-writer commit (creating it likewise): its
 * tpde_store_begin stages a part, which tpde_store_finish_part ends, and
 * the coordinator's tpde_store_commit_parts publishes (docs/FORMAT.md,
 * "Parts"). A staging handle never takes the writer lock; its objects stay
 * protected from cleanup until tpde_store_close.
 * config: NULL, or JSON {"keyframe_interval": K, "reference": "previous"|
 * "base", "lossy": [{"pattern", "threshold"}]}, any key omitted meaning
 * "as stored" (or the default for a new store); a value that differs from
 * an existing store's is TPDE_E_INVALID. Also "max_output": the decode
 * limit of this handle's reads, as max_output elsewhere (a restore's total
 * bytes, and any one decode's memory; 0 or omitted: the memory this
 * process may use bounds decodes, nothing bounds a restore), and
 * "positions" (TPDE_DELTA_DENSE_ONLY or _SPARSE_ONLY; 0: per chunk) for
 * this writer's delta frames, "priority" ("normal", "low", "idle") for
 * this handle's writes, and "recode": "background" (or omitted) commits an
 * add at once and re-codes the checkpoint before it as reverse deltas on a
 * thread of its own, which this handle's next write and tpde_store_close
 * wait for (readers never do); "inline" re-codes it inside
 * tpde_store_commit. Any other key is TPDE_E_INVALID. A path with
 * a URL scheme ("s3://...") is TPDE_E_UNSUPPORTED, never a local folder.
 * Nothing inside the store is followed through a symlink, or opened if it
 * is not a regular file or folder. Another writer holding the store is
 * TPDE_E_IO with errno EWOULDBLOCK. Result, in the new handle: the store's
 * config. */
int tpde_store_open(const char *path, int32_t write, const char *config, uint64_t config_len,
                    int32_t nthreads, uint64_t *handle, char *err, size_t err_len);
/* Drop the checkpoint being added, if any, wait for a background re-code
 * in flight, and close the store. The handle is closed either way; an
 * error is that re-code's failure (its checkpoint stays stored whole,
 * which loses nothing), also reported by the next write on the handle. */
int tpde_store_close(uint64_t handle, char *err, size_t err_len);
/* Wait for the background re-code in flight on this handle, if any (see
 * "recode" of tpde_store_open); its failure is the error, reported once
 * (its checkpoint stays stored whole, which loses nothing). */
int tpde_store_wait(uint64_t handle, char *err, size_t err_len);

/* The bytes of the objects this handle has added to the store since it
 * was opened, less those its cleanups removed, into *out: the store's
 * growth from its adds, re-codes and removes, without a walk of the store
 * (manifests are not counted). On a remote store, what its cache took.
 * Like tpde_store_transfer it never waits for the handle. */
int tpde_store_object_bytes(uint64_t handle, int64_t *out, char *err, size_t err_len);

/* The handle's traffic with its bucket (TPDE_TRANSFER_*): the first
 * min(n, TPDE_TRANSFER_COUNT) counts are written into counts[0..], and
 * their number into *written; a local store has none (*written is 0,
 * counts untouched). Unlike every other call on a handle, this one never
 * waits for the handle: it reads counters only, so that a progress display
 * may poll it while another thread adds or commits on the same handle. */
int tpde_store_transfer(uint64_t handle, uint64_t *counts, uint64_t n, uint64_t *written, char *err,
                        size_t err_len);

/* Start adding a checkpoint to the main run at step (the newest step + 1
 * when has_step is 0), with tags (NULL or a JSON list of strings); or,
 * when base is non-zero, the base that reference "base" codes against. On
 * a staging handle: start a part (step, tags and base are ignored). */
int tpde_store_begin(uint64_t handle, int64_t step, int32_t has_step, const char *tags,
                     uint64_t tags_len, int32_t base, char *err, size_t err_len);
/* tpde_store_begin for run, created with parent (JSON {"run", "step"} or
 * {"base": true}; NULL: none) when it does not exist; a run's first
 * checkpoint is coded against its parent (docs/FORMAT.md, "Runs"). */
int tpde_store_begin_run(uint64_t handle, const char *run, const char *parent, uint64_t parent_len,
                         int64_t step, int32_t has_step, const char *tags, uint64_t tags_len, char *err,
                         size_t err_len);
/* Add the file at src as rel (a relative path with '/' separators). hints:
 * NULL, or for a torch.save file TPDE_TORCH_HINTS (see Files); note: NULL,
 * or why a container-like file is stored whole. progress and cancel as for
 * tpde_compress_file. */
int tpde_store_add_file(uint64_t handle, const char *rel, const char *src, const char *hints,
                        uint64_t hints_len, const char *note, uint64_t *progress,
                        const int32_t *cancel, char *err, size_t err_len);
/* Add a state dict from memory as the file rel, in the state-dict layout
 * (docs/FORMAT.md, state dict files), which the library lays out: meta is
 * JSON {"skeleton", "aliases", "state_dict_metadata"} (each any JSON, null
 * when absent; NULL meta: all null), the tensors in file order. Result:
 * {"tensors": [{"name", "offset", "nbytes"}]}, where the layout put each
 * tensor's bytes in the file. */
int tpde_store_add_state_dict(uint64_t handle, const char *rel, const char *meta, uint64_t meta_len,
                              const tpde_store_tensor *tensors, uint64_t n, char *err, size_t err_len);
/* Make the checkpoint durable and visible (result: its record, FORMAT.md
 * "Checkpoint record"), or drop it. */
int tpde_store_commit(uint64_t handle, char *err, size_t err_len);
int tpde_store_abort(uint64_t handle, char *err, size_t err_len);
/* On a staging handle: end the part begun with tpde_store_begin. Result:
 * the part's descriptor, for the coordinator. */
int tpde_store_finish_part(uint64_t handle, char *err, size_t err_len);
/* On a writer handle: publish one checkpoint made of every part's files.
 * parts: a JSON array of descriptors. holder: NULL, or one folder name
 * beside the store whose pointer file is written before the checkpoint is
 * published; the checkpoint then lives while that folder holds it (see
 * tpde_store_reclaim). Result: the checkpoint's record. */
int tpde_store_commit_parts(uint64_t handle, int64_t step, int32_t has_step, const char *tags,
                            uint64_t tags_len, const char *holder, const char *parts, uint64_t parts_len,
                            char *err, size_t err_len);
/* Remove every checkpoint whose holder folder no longer holds it (gone,
 * or its pointer names another checkpoint); none when a holder cannot be
 * checked. Result: {"removed": [steps]}. */
int tpde_store_reclaim(uint64_t handle, char *err, size_t err_len);
/* Read the pointer file a holder folder keeps. Result, for this thread:
 * {"store": the store's path (folder joined with the pointer's), "step"}.
 * A folder without one is TPDE_E_IO with errno ENOENT. */
int tpde_store_read_pointer(const char *folder, char *err, size_t err_len);
/* Remove checkpoint step of run (NULL or "": the main run); what any run
 * coded against it is re-coded first. */
int tpde_store_remove(uint64_t handle, const char *run, int64_t step, char *err, size_t err_len);
/* Remove a run and its checkpoints; other runs' deltas against it become
 * keyframes first. */
int tpde_store_remove_run(uint64_t handle, const char *run, char *err, size_t err_len);
/* Check every object (deep: decode everything too); repair first removes
 * leftovers of dead writers. Result: {"problems": [{"step", "file",
 * "region", "object", "message"}], "cleaned": {...} or null}.
 * progress: NULL, or two counters the library stores atomically while it
 * works: [0] checkpoints checked so far, [1] how many it will check. */
int tpde_store_verify(uint64_t handle, int32_t deep, int32_t repair, uint64_t *progress, char *err,
                      size_t err_len);

#endif /* TPDE_NO_PROTOTYPES */

/* ======================================================================
 * Store readers (capi/reader.go)
 * ====================================================================== */

/* A reader handle holds one committed snapshot of a store: what it reads
 * does not change while a writer commits beside it. */

/* Which record tpde_store_reader_record and _tensors read. */
#define TPDE_STORE_STEP 0   /* the checkpoint step */
#define TPDE_STORE_LATEST 1 /* the newest checkpoint (step ignored) */
#define TPDE_STORE_BASE 2   /* the base (step ignored) */

/* Overwrite what exists at a restore's destination. */
#define TPDE_RESTORE_FORCE 1

/* Where tpde_store_read_tensors puts one tensor: the file's bytes
 * [offset, offset + nbytes) into dst, which the caller allocated. */
typedef struct tpde_store_span {
    uint64_t offset;
    void *dst;
    uint64_t nbytes;
} tpde_store_span;

#ifndef TPDE_NO_PROTOTYPES

/* Open a reader on the newest committed state. Result, in the new handle:
 * {"generation", "config", "base": whether the store has a base, "count":
 * how many checkpoints its main run holds}: nothing that grows with the
 * history, so that reading the newest checkpoint costs the same however
 * long the run. */
int tpde_store_reader_open(uint64_t handle, uint64_t *reader, char *err, size_t err_len);
int tpde_store_reader_close(uint64_t reader, char *err, size_t err_len);
/* The steps of the run the reader reads. Result: {"steps": [oldest first]}. */
int tpde_store_reader_steps(uint64_t reader, char *err, size_t err_len);
/* Make the reader read run (NULL or "": the main run, which it reads when
 * opened) of the same snapshot. Result: {"count": its checkpoints}. */
int tpde_store_reader_use(uint64_t reader, const char *run, char *err, size_t err_len);
/* Result: {"runs": [{"name", "parent", "count", "newest"}]}, main first. */
int tpde_store_reader_runs(uint64_t reader, char *err, size_t err_len);
/* Read one checkpoint's record (which: TPDE_STORE_*). Result: {"record":
 * the record (FORMAT.md "Checkpoint record"), "object": the name of the
 * object that holds it, "chains": [[frames each region's decode walks, 0
 * where its chain cannot be followed] per file], "problem": "" or why a
 * chain cannot be followed}. A record that cannot be read (both copies
 * damaged) is TPDE_E_CORRUPT naming the checkpoint; the other checkpoints
 * still read. */
int tpde_store_reader_record(uint64_t reader, int64_t step, int32_t which, char *err, size_t err_len);
/* Describe every safetensors and state-dict file of checkpoint step (which
 * as for tpde_store_reader_record) from its header, parsed and checked:
 * result {"step", "files": [{"path", "layout", "tensors": [{"name",
 * "dtype", "shape", "offset", "nbytes"}], "meta"}]}, offsets in the file;
 * meta: a state dict's {"skeleton", "aliases", "state_dict_metadata"}, a
 * safetensors file's __metadata__. rel: NULL for every such file, else
 * that file only. A file whose header is damaged or hostile is
 * TPDE_E_CORRUPT naming it. */
int tpde_store_reader_tensors(uint64_t reader, int64_t step, int32_t which, const char *rel, char *err,
                              size_t err_len);
/* Decode n spans of file rel of checkpoint step into the caller's buffers:
 * one call loads every tensor of a file. */
int tpde_store_read_tensors(uint64_t reader, int64_t step, const char *rel, const tpde_store_span *spans,
                            uint64_t n, char *err, size_t err_len);
/* Read bytes [offset, offset+n) of a stored file of checkpoint step. */
int tpde_store_read_range(uint64_t reader, int64_t step, const char *rel, uint64_t offset, void *dst,
                          uint64_t n, char *err, size_t err_len);
/* Restore checkpoint step: every file into the folder dest (rel NULL), or
 * the one file rel to the path dest. All or nothing: the files are written
 * beside dest, checked against the hashes they were added with, fsynced,
 * and then moved into place; on failure nothing of them is left. Modes are
 * the recorded ones less the umask. Nothing below dest is reached through a
 * symlink. A dest folder that is not empty (or a dest file that exists) is
 * TPDE_E_IO with errno EEXIST unless flags has TPDE_RESTORE_FORCE: then the
 * checkpoint's files replace those of the same names, and the rest of dest
 * is kept. progress: NULL, or two counters the library stores atomically
 * while it works: [0] bytes written so far, [1] bytes it will write. */
int tpde_store_restore(uint64_t reader, int64_t step, const char *rel, const char *dest, int32_t flags,
                       uint64_t *progress, char *err, size_t err_len);

#endif /* TPDE_NO_PROTOTYPES */

#ifdef __cplusplus
}
#endif

#endif /* TPDE_H */
