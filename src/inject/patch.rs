//! JSON-patch building blocks: pointers into the pod and `add` operations.

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, PatchOperation};
use serde::Serialize;
use serde_json::Value;

pub(super) fn pointer<'t>(tokens: impl IntoIterator<Item = Token<'t>>) -> PointerBuf {
    PointerBuf::from_tokens(tokens)
}

pub(super) fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

pub(super) fn to_value<T: Serialize>(v: &T) -> Value {
    // k8s-openapi types always serialize to JSON.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Adds `items` to the list at `ptr`: the whole list when the pod has none, else each at
/// its end.
pub(super) fn push_list<T: Serialize>(
    ops: &mut Vec<PatchOperation>,
    ptr: PointerBuf,
    absent: bool,
    items: &[T],
) {
    if items.is_empty() {
        return;
    }
    if absent {
        ops.push(add(ptr, to_value(&items)));
    } else {
        for item in items {
            ops.push(add(ptr.with_trailing_token("-"), to_value(item)));
        }
    }
}
