//! SentencePiece `tokenizer.model` support: a protobuf reader and the
//! conversion to a `tokenizers::Tokenizer`.

mod convert;
mod proto;

pub(crate) use convert::{convert, ConvertOptions};
pub(crate) use proto::ModelProto;
pub use proto::ProtoError;
