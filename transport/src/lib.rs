//! `rill`: the client library of Rill, and the control protocol it speaks
//! with `rilld`.

// rkyv's derives generate `Archived*` twins whose variant fields cannot
// carry docs; the real types are documented.
#[allow(missing_docs)]
pub mod protocol;
pub mod wire;
