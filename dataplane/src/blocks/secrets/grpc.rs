//! `GetSecret` and `GetBulkSecret`.

use skiff_proto::runtime as pb;
use tonic::Status;

use super::SecretsBlock;

pub async fn get_secret(
    block: &SecretsBlock,
    r: pb::GetSecretRequest,
) -> Result<pb::GetSecretResponse, Status> {
    let s = block
        .get(&r.store_name, &r.key)
        .await
        .map_err(|e| e.to_status())?;
    Ok(pb::GetSecretResponse {
        data: s.into_iter().collect(),
    })
}

pub async fn get_bulk_secret(
    block: &SecretsBlock,
    r: pb::GetBulkSecretRequest,
) -> Result<pb::GetBulkSecretResponse, Status> {
    let all = block.bulk(&r.store_name).await.map_err(|e| e.to_status())?;
    Ok(pb::GetBulkSecretResponse {
        data: all
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    pb::SecretResponse {
                        secrets: v.into_iter().collect(),
                    },
                )
            })
            .collect(),
    })
}
