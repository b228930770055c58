//! Recurrent layers (LSTM, GRU, RNN), unrolled over a static sequence length.

use super::Res;
use crate::onnx::import::{Ctx, Node};

pub fn lstm(_: &mut Ctx, _: &Node) -> Res {
    Err("LSTM is not supported yet".into())
}

pub fn gru(_: &mut Ctx, _: &Node) -> Res {
    Err("GRU is not supported yet".into())
}

pub fn rnn(_: &mut Ctx, _: &Node) -> Res {
    Err("RNN is not supported yet".into())
}
