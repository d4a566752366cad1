//! Link requests of new devices waiting for approval: held in memory for a few minutes, bounded
//! in number. Nothing in them is secret (the secret is in the code on the new device's screen).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sealpost_proto::link::{LinkApproval, LinkRequest};

use crate::error::ApiFailure;

/// How long a new device waits for approval.
pub const LINK_TTL: Duration = Duration::from_secs(10 * 60);
/// Most link requests waiting at once.
pub const MAX_PENDING_LINKS: usize = 10_000;

struct Pending {
    request: LinkRequest,
    approval: Option<LinkApproval>,
    expires: Instant,
}

/// The waiting link requests.
#[derive(Default)]
pub struct LinkBook {
    pending: Mutex<HashMap<String, Pending>>,
}

impl LinkBook {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Pending>>, ApiFailure> {
        let mut map = self.pending.lock().map_err(|_| ApiFailure::internal())?;
        let now = Instant::now();
        map.retain(|_, p| p.expires > now);
        Ok(map)
    }

    /// Files a request; refuses a link id in use and a full book.
    pub fn put(&self, request: LinkRequest) -> Result<(), ApiFailure> {
        let mut map = self.lock()?;
        if map.len() >= MAX_PENDING_LINKS {
            return Err(ApiFailure::unavailable(
                "too many devices are waiting to be linked: retry in a few minutes",
            ));
        }
        if map.contains_key(&request.link_id) {
            return Err(ApiFailure::new(
                sealpost_proto::ErrorCode::Conflict,
                "this link code is in use: start over for a new one",
            ));
        }
        map.insert(
            request.link_id.clone(),
            Pending {
                request,
                approval: None,
                expires: Instant::now() + LINK_TTL,
            },
        );
        Ok(())
    }

    /// The request under a link id, while nobody approved it.
    pub fn request(&self, link_id: &str) -> Result<LinkRequest, ApiFailure> {
        let map = self.lock()?;
        match map.get(link_id) {
            Some(p) if p.approval.is_none() => Ok(p.request.clone()),
            _ => Err(no_link()),
        }
    }

    /// Records the approval of a request.
    pub fn approve(&self, link_id: &str, approval: LinkApproval) -> Result<(), ApiFailure> {
        let mut map = self.lock()?;
        match map.get_mut(link_id) {
            Some(p) if p.approval.is_none() => {
                p.approval = Some(approval);
                Ok(())
            }
            _ => Err(no_link()),
        }
    }

    /// The approval, for the new device, once it exists.
    pub fn approval(
        &self,
        link_id: &str,
    ) -> Result<(LinkRequest, Option<LinkApproval>), ApiFailure> {
        let map = self.lock()?;
        map.get(link_id)
            .map(|p| (p.request.clone(), p.approval.clone()))
            .ok_or_else(no_link)
    }
}

fn no_link() -> ApiFailure {
    ApiFailure::not_found(
        "no device is waiting to be linked with this code (wrong code, or it expired)",
    )
}
