// Package api is the Go façade of libtpde: everything the C ABI offers,
// as Go calls on Go values, so that Go tests exercise exactly what C and
// Python callers reach. capi/ is //export glue over it, one call each: it
// turns C pointers into slices and strings (no tensor bytes copied),
// calls this package and turns the error into a status code.
//
// What this package owns, and capi/ therefore does not:
//
//   - sessions (sessions.go): the objects a caller holds between calls —
//     an open store with its at most one checkpoint being added, a reader
//     of one committed snapshot, a bundle being written, an opened bundle
//     — behind handle numbers (core/handles);
//   - options (options.go): the codes and JSON documents callers pass
//     (dtype, effort, residual kind and delta flags, file flags, the store
//     config, tags, a run's parent), checked and turned into core options;
//   - results (results.go): the JSON documents calls leave, and the one
//     rule for where they are kept (see Result);
//   - status (status.go): errors to the ABI's status codes and messages.
//
// The operations follow include/tpde.h's sections, one file each:
// frames.go, delta.go, files.go, bundles.go, store.go, reader.go.
//
// The result convention. Every call returns an error, and scalars (a
// handle, a length, a bound) as Go results. Every structured result is one
// JSON document, kept where the call acted: by the session it acted on
// (or the session it opened), else, for a call on no session, by its
// Caller (in the C ABI, the calling thread). Result copies it out, as
// often as asked, until the next call there replaces it, so that a call
// with side effects never has to be repeated to read what it did.
package api
