//! `rill`: the client library of Rill, and the control protocol it speaks
//! with `rilld`.

pub mod protocol;
pub mod wire;
