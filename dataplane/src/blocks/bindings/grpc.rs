//! `InvokeBinding`: `data` verbatim; the caller's gRPC metadata joins the
//! binding metadata (the request's own keys win), as daprd copies it.

use skiff_components::bindings::Request as BindingRequest;
use skiff_proto::runtime as pb;
use tonic::Status;

use super::BindingsBlock;

pub async fn invoke(
    block: &BindingsBlock,
    headers: &http::HeaderMap,
    r: pb::InvokeBindingRequest,
) -> Result<pb::InvokeBindingResponse, Status> {
    let mut metadata: skiff_components::bindings::Metadata = r.metadata.into_iter().collect();
    for (k, v) in headers {
        let k = k.as_str();
        if k.starts_with("grpc-") || k == "content-type" || k == "te" || k == "user-agent" {
            continue;
        }
        if let Ok(v) = v.to_str() {
            metadata.entry(k.to_owned()).or_insert_with(|| v.to_owned());
        }
    }
    let resp = block
        .invoke(
            &r.name,
            BindingRequest {
                operation: r.operation,
                data: r.data,
                metadata,
            },
        )
        .await
        .map_err(|e| e.to_status())?;
    Ok(pb::InvokeBindingResponse {
        data: resp.data.unwrap_or_default(),
        metadata: resp.metadata.into_iter().collect(),
    })
}
