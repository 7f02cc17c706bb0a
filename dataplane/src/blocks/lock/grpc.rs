//! `TryLockAlpha1` and `UnlockAlpha1`.

use skiff_proto::runtime as pb;
use tonic::Status;

use super::LockBlock;

pub async fn try_lock(
    block: &LockBlock,
    r: pb::TryLockRequest,
) -> Result<pb::TryLockResponse, Status> {
    let success = block
        .try_lock(
            &r.store_name,
            &r.resource_id,
            &r.lock_owner,
            i64::from(r.expiry_in_seconds),
        )
        .await
        .map_err(|e| e.to_status())?;
    Ok(pb::TryLockResponse { success })
}

pub async fn unlock(block: &LockBlock, r: pb::UnlockRequest) -> Result<pb::UnlockResponse, Status> {
    let status = block
        .unlock(&r.store_name, &r.resource_id, &r.lock_owner)
        .await
        .map_err(|e| e.to_status())?;
    Ok(pb::UnlockResponse { status })
}
