/*
 * tpde.h - the C ABI of libtpde, the tpde checkpoint codec.
 *
 * This header is written by hand and is the stable contract; the header that
 * `go build -buildmode=c-shared` emits beside the library is not.
 *
 * Conventions that hold for every function:
 *
 *  - Every function that can fail returns an int status: TPDE_OK (0) or one
 *    of the TPDE_E_* codes below.
 *  - Every such function takes `char *err, size_t err_len` as its last two
 *    arguments. On failure a NUL-terminated, one-line message naming what
 *    failed is written there (truncated to err_len - 1 bytes). err may be
 *    NULL. The message belongs to that call alone, so concurrent calls from
 *    many threads never see each other's messages.
 *  - All functions are safe to call from many threads at once.
 *  - The library keeps no pointer the caller passed after the call returns,
 *    and returns no pointer into its own memory (except tpde_version, which
 *    returns a static string).
 *  - No Go panic crosses this boundary: an unexpected internal failure is
 *    returned as TPDE_E_INTERNAL.
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

/* Bumped when a function's signature or meaning changes. */
#define TPDE_ABI_VERSION 1

/* Status codes. */
#define TPDE_OK 0
#define TPDE_E_INVALID 1          /* bad argument: dtype, shape/size mismatch, NULL pointer */
#define TPDE_E_CORRUPT 2          /* input is not a valid tpde object: checksum, truncation, bad header */
#define TPDE_E_UNSUPPORTED 3      /* valid but unreadable here: newer major version, unknown kind */
#define TPDE_E_BUFFER_TOO_SMALL 4 /* output buffer too small; see the bound functions */
#define TPDE_E_IO 5               /* the operating system refused a file operation */
#define TPDE_E_INTERNAL 6         /* a bug in libtpde; the message says where */

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

/* What tpde_inspect reports about a frame without decoding it. */
typedef struct tpde_frame_info {
    uint8_t version_major;
    uint8_t version_minor;
    uint8_t kind;  /* 0: keyframe */
    uint8_t dtype; /* TPDE_* dtype code */
    uint32_t ndim;
    uint64_t shape[TPDE_MAX_NDIM];
    uint64_t raw_size;   /* bytes the decoded tensor occupies */
    uint64_t frame_size; /* bytes of the frame itself */
    uint32_t chunk_elems;
    uint32_t nchunks;
} tpde_frame_info;

#ifndef TPDE_NO_PROTOTYPES

/* Library version string, e.g. "0.1.0". Static; never free it. */
const char *tpde_version(void);

/* TPDE_ABI_VERSION of the loaded library. */
int tpde_abi_version(void);

/* Default worker count for calls that pass nthreads = 0.
 * n <= 0 restores the default: the number of CPUs. */
void tpde_set_num_threads(int32_t n);
int32_t tpde_get_num_threads(void);

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

/* Read and validate a frame's header and chunk table without decoding. */
int tpde_inspect(const void *src, uint64_t src_len, tpde_frame_info *info, char *err, size_t err_len);

/* The sum, over the byte streams tpde splits this tensor into, of each
 * stream's order-0 entropy, in bits: the floor for any coder that codes the
 * streams independently, byte by byte, with one model per stream. Used by
 * the benchmarks to print the bound beside each ratio. */
int tpde_entropy_bound(const void *src, uint64_t src_len, int32_t dtype, double *bits, char *err,
                       size_t err_len);

/* Compress a .safetensors file into a tpde file (docs/FORMAT.md, "Files").
 * The input is memory-mapped; the output is written to a temporary file in
 * dst_path's directory, fsynced and renamed over dst_path. If progress is
 * not NULL, the library stores there, atomically, the count of input bytes
 * processed so far, so another thread may poll it for a progress bar. */
int tpde_compress_file(const char *src_path, const char *dst_path, int32_t nthreads,
                       uint64_t *progress, char *err, size_t err_len);

/* Restore the original file, byte for byte, from a tpde file; written
 * atomically like tpde_compress_file. progress counts output bytes. */
int tpde_decompress_file(const char *src_path, const char *dst_path, int32_t nthreads,
                         uint64_t *progress, char *err, size_t err_len);

/* Describe a tpde file (or a raw frame file) as JSON: the container fields
 * and, per tensor, name, dtype, shape and sizes. Writes at most cap bytes
 * (not NUL-terminated) and sets *needed to the full length; call again with
 * a larger buffer if *needed > cap (the status is then
 * TPDE_E_BUFFER_TOO_SMALL). */
int tpde_file_info(const char *path, char *json, uint64_t cap, uint64_t *needed, char *err,
                   size_t err_len);

#endif /* TPDE_NO_PROTOTYPES */

#ifdef __cplusplus
}
#endif

#endif /* TPDE_H */
