//! Which limits apply to a caller: a tenant's plan (its tier with its overrides) and then its
//! key's own limits for API keys, the user plan for access tokens (with the token's revocation in
//! the same round trip), nothing for admins and anonymous routes; and the tenant's token debits
//! after the upstream answered. The pipeline's step 6 is [`Limiter::admit_principal`].

use std::sync::Arc;

use super::{refusal, LimitPolicy, Limiter, Scope};
use crate::auth::{Identity, Verified};
use crate::config::RateLimitConfig;
use crate::error::GatewayError;
use crate::ratelimit::{Decision, Plan, RateLimitHeaders};
use crate::store::TokenRef;

/// A request that passed authentication, its token's revocation check and its limits: the only
/// thing forwarding takes. Built by [`Limiter::admit_principal`] alone.
#[derive(Debug, Clone)]
pub struct Admitted {
    caller: Verified,
    /// The tightest window's `RateLimit-*` headers (none when no limit applied).
    headers: Option<RateLimitHeaders>,
}

impl Admitted {
    pub fn identity(&self) -> &Identity {
        self.caller.identity()
    }

    pub fn caller(&self) -> &Verified {
        &self.caller
    }

    /// The `RateLimit-*` headers of the tightest window that applied.
    pub fn headers(&self) -> Option<&RateLimitHeaders> {
        self.headers.as_ref()
    }

    /// An admitted request for benchmarks and tests (`test-util` builds only).
    #[cfg(feature = "test-util")]
    pub fn for_test(caller: Verified) -> Admitted {
        Admitted {
            caller,
            headers: None,
        }
    }
}

impl Limiter {
    /// Step 6 of the pipeline: the request limits of the caller's scope and, for tenants, the
    /// token budget, in one decision (one store round trip) so that nothing is consumed when
    /// any refuses; for a user's access token the same round trip checks its revocation (401).
    pub async fn admit_principal(
        &self,
        caller: Verified,
        limits: &RateLimitConfig,
        policy: LimitPolicy,
    ) -> Result<Admitted, GatewayError> {
        let decision = match caller.identity() {
            Identity::ApiKey { tenant, key } => {
                let tier = limits.plans.get(&tenant.tier).cloned().unwrap_or_default();
                let plan = tenant.limits.apply(&tier);
                let decision = self.admit(Scope::Tenant(&tenant.id), &plan, policy).await?;
                if key.limits.is_empty() || decision.as_ref().and_then(refusal).is_some() {
                    decision
                } else {
                    // The key's own limits, after its tenant's admitted the request (a key
                    // without limits costs nothing more).
                    let plan = key.limits.apply(&Plan::default());
                    let own = self.admit(Scope::ApiKey(&key.id), &plan, policy).await?;
                    tighter(decision, own)
                }
            }
            Identity::User(claims) => {
                // Users have request limits only; a token budget is a tenant's.
                let mut plan = limits.user.clone();
                plan.tokens_per_month = None;
                let token = TokenRef {
                    subject: &claims.sub,
                    jti: claims.jti.as_deref(),
                    issued_at: claims.iat,
                };
                self.admit_user(token, &plan, policy).await?
            }
            Identity::Admin { .. } | Identity::Anonymous => None,
        };
        if let Some(refused) = decision.as_ref().and_then(refusal) {
            return Err(refused);
        }
        Ok(Admitted {
            caller,
            headers: decision.map(|d| d.headers),
        })
    }

    /// Debit a tenant's monthly token budget from the upstream's usage headers (or trailers):
    /// `x-input-tokens` + `x-output-tokens`, off the response path. Users have no budget.
    pub fn debit_response(self: &Arc<Self>, identity: &Identity, headers: &http::HeaderMap) {
        let Identity::ApiKey { tenant, .. } = identity else {
            return;
        };
        let n = used_tokens(headers);
        if n == 0 {
            return;
        }
        let (limiter, tenant) = (self.clone(), tenant.clone());
        tokio::spawn(async move {
            let debited = limiter.debit_tokens(Scope::Tenant(&tenant.id), n);
            if let Err(e) = debited.await {
                tracing::warn!(error = %e, tokens = n, "token debit lost: store unavailable");
            }
        });
    }
}

/// Tokens an upstream answer reports having used (0 when it says nothing readable).
fn used_tokens(headers: &http::HeaderMap) -> u64 {
    let read = |name: &str| -> u64 {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    read("x-input-tokens").saturating_add(read("x-output-tokens"))
}

/// Of two decisions, the refusing one, else the one with less room left.
fn tighter(a: Option<Decision>, b: Option<Decision>) -> Option<Decision> {
    match (a, b) {
        (Some(a), Some(b)) => {
            if !b.allowed() || b.headers.remaining < a.headers.remaining {
                Some(b)
            } else {
                Some(a)
            }
        }
        (a, b) => a.or(b),
    }
}
