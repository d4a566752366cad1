//! Link requests of new devices waiting for approval: kept in the store for a few minutes, so
//! that the new device and the approving one may reach different server nodes; bounded in
//! number. Nothing in them is secret (the secret is in the code on the new device's screen).

use std::sync::Arc;
use std::time::Duration;

use sealpost_proto::link::{LinkApproval, LinkRequest};
use serde::{Deserialize, Serialize};

use crate::auth::now_secs;
use crate::error::ApiFailure;
use crate::storage::{PendingKind, PendingRecord, Store, StoreError};

/// How long a new device waits for approval.
pub const LINK_TTL: Duration = Duration::from_secs(10 * 60);
/// Most link requests waiting at once.
pub const MAX_PENDING_LINKS: u64 = 10_000;

#[derive(Serialize, Deserialize)]
struct Pending {
    request: LinkRequest,
    approval: Option<LinkApproval>,
}

/// The waiting link requests.
pub struct LinkBook {
    store: Arc<dyn Store>,
}

impl LinkBook {
    /// The book kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    async fn get(&self, link_id: &str) -> Result<(Vec<u8>, Pending), ApiFailure> {
        let (bytes, _) = self
            .store
            .pending(PendingKind::Link, link_id.as_bytes().to_vec(), false)
            .await?
            .ok_or_else(no_link)?;
        let pending = serde_json::from_slice(&bytes).map_err(|_| ApiFailure::internal())?;
        Ok((bytes, pending))
    }

    /// Files a request; refuses a link id in use and a full book.
    pub async fn put(&self, request: LinkRequest) -> Result<(), ApiFailure> {
        let key = request.link_id.as_bytes().to_vec();
        let value = serde_json::to_vec(&Pending {
            request,
            approval: None,
        })
        .map_err(|_| ApiFailure::internal())?;
        let record = PendingRecord {
            kind: PendingKind::Link,
            key,
            value,
            expires_at: now_secs() + LINK_TTL.as_secs(),
        };
        match self
            .store
            .put_pending(record, Some(MAX_PENDING_LINKS))
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::Full) => Err(ApiFailure::unavailable(
                "too many devices are waiting to be linked: retry in a few minutes",
            )),
            Err(StoreError::Conflict) => Err(ApiFailure::new(
                sealpost_proto::ErrorCode::Conflict,
                "this link code is in use: start over for a new one",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The request under a link id, while nobody approved it.
    pub async fn request(&self, link_id: &str) -> Result<LinkRequest, ApiFailure> {
        match self.get(link_id).await? {
            (_, p) if p.approval.is_none() => Ok(p.request),
            _ => Err(no_link()),
        }
    }

    /// Records the approval of a request (once: a second approval finds none waiting).
    pub async fn approve(&self, link_id: &str, approval: LinkApproval) -> Result<(), ApiFailure> {
        let (old, pending) = self.get(link_id).await?;
        if pending.approval.is_some() {
            return Err(no_link());
        }
        let new = serde_json::to_vec(&Pending {
            request: pending.request,
            approval: Some(approval),
        })
        .map_err(|_| ApiFailure::internal())?;
        let swapped = self
            .store
            .swap_pending(PendingKind::Link, link_id.as_bytes().to_vec(), old, new)
            .await?;
        if swapped { Ok(()) } else { Err(no_link()) }
    }

    /// The approval, for the new device, once it exists.
    pub async fn approval(
        &self,
        link_id: &str,
    ) -> Result<(LinkRequest, Option<LinkApproval>), ApiFailure> {
        let (_, p) = self.get(link_id).await?;
        Ok((p.request, p.approval))
    }
}

fn no_link() -> ApiFailure {
    ApiFailure::not_found(
        "no device is waiting to be linked with this code (wrong code, or it expired)",
    )
}
