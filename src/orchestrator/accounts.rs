//! Cloud-account checks: when a user asks (`POST /v1/cloud-accounts/{id}/validate`), run the
//! provider's `validate` and `placements` and store the outcome for the API and console.

use std::time::Duration;

use super::Context;
use crate::model::{now, AccountCheckResult, CheckState, PlacementOption};
use crate::providers::{ErrorKind, ProviderError};

/// Longest a check may take before it is reported as unreachable.
const CHECK_DEADLINE: Duration = Duration::from_secs(120);

/// Check one account and record the result. Errors of the store are logged: the check stays
/// pending and is run again at the next start.
pub async fn check(ctx: &Context, account_id: &str) {
    let result = match tokio::time::timeout(CHECK_DEADLINE, run(ctx, account_id)).await {
        Ok(r) => r,
        Err(_) => Err(ProviderError::new(
            ErrorKind::Unreachable,
            format!(
                "the check did not finish within {} s: the endpoint is too slow or unreachable",
                CHECK_DEADLINE.as_secs()
            ),
        )),
    };
    let requested_at = match ctx.store.account_check(account_id).await {
        Ok(Some(c)) => c.requested_at,
        Ok(None) => now(),
        Err(e) => {
            tracing::error!(account = account_id, error = %e, "cannot read the account check");
            return;
        }
    };
    let record = match result {
        Ok(None) => return,
        Ok(Some((product, checks, placements))) => AccountCheckResult {
            account_id: account_id.to_string(),
            state: CheckState::Ok,
            endpoint_product: product,
            checks,
            error: String::new(),
            error_kind: String::new(),
            placements,
            requested_at,
            finished_at: Some(now()),
        },
        Err(e) => AccountCheckResult {
            account_id: account_id.to_string(),
            state: CheckState::Failed,
            endpoint_product: String::new(),
            checks: Vec::new(),
            error: e.message,
            error_kind: e.kind.as_str().to_string(),
            placements: Vec::new(),
            requested_at,
            finished_at: Some(now()),
        },
    };
    if let Err(e) = ctx.store.finish_account_check(record).await {
        tracing::error!(account = account_id, error = %e, "cannot record the account check");
    }
}

type Checked = Option<(String, Vec<String>, Vec<PlacementOption>)>;

async fn run(ctx: &Context, account_id: &str) -> Result<Checked, ProviderError> {
    let store_error =
        |e: crate::store::Error| ProviderError::transient(format!("state store: {e}"));
    let account = match ctx.store.cloud_account(account_id).await {
        Ok(a) => a,
        Err(crate::store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_error(e)),
    };
    let provider = super::provider_for(ctx, &account).await?.ok_or_else(|| {
        ProviderError::new(
            ErrorKind::Credentials,
            "the account has no credentials: enter them",
        )
    })?;
    let report = provider.validate().await?;
    let placements = provider
        .placements()
        .await?
        .into_iter()
        .map(|p| PlacementOption {
            key: p.key,
            value: p.value,
            label: p.label,
        })
        .collect();
    Ok(Some((report.endpoint_product, report.checks, placements)))
}
