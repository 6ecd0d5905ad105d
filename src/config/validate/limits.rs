//! The `plans:` and `rate_limits:` sections: tiers, the user and auth limits, policies.

use super::*;

impl Validator {
    pub(in crate::config) fn plan(&mut self, f: &PlanFile, path: &str) -> Plan {
        let mut plan = Plan::default();
        let windows = [
            (
                Window::Second,
                &f.requests_per_second,
                "requests_per_second",
            ),
            (
                Window::Minute,
                &f.requests_per_minute,
                "requests_per_minute",
            ),
            (Window::Hour, &f.requests_per_hour, "requests_per_hour"),
            (Window::Day, &f.requests_per_day, "requests_per_day"),
            (Window::Month, &f.requests_per_month, "requests_per_month"),
        ];
        for (window, value, name) in windows {
            if value.is_none() {
                continue;
            }
            let max = if window.is_calendar() {
                u64::MAX / 4
            } else {
                MAX_SLIDING_LIMIT
            };
            let n = self.num(value, &format!("{path}.{name}"), 0, 1, max);
            if n > 0 {
                plan.set(window, Some(n));
            }
        }
        if f.tokens_per_month.is_some() {
            let path = format!("{path}.tokens_per_month");
            let n = self.num(&f.tokens_per_month, &path, 0, 1, u64::MAX / 4);
            if n > 0 {
                plan.tokens_per_month = Some(n);
            }
        }
        plan
    }

    pub(in crate::config) fn plans(&mut self, v: Value) -> BTreeMap<String, Plan> {
        let files: BTreeMap<String, Value> =
            section(v, "plans", &mut self.problems).unwrap_or_default();
        let mut out = BTreeMap::new();
        for (name, value) in files {
            let path = format!("plans.{name}");
            if !valid_name(&name) {
                self.problem(
                    &path,
                    "plan names are lower-case letters, digits, '-' and '_'",
                );
            }
            let file: PlanFile = if value.is_null() {
                PlanFile::default()
            } else {
                match section(value, &path, &mut self.problems) {
                    Some(f) => f,
                    None => continue,
                }
            };
            let plan = self.plan(&file, &path);
            out.insert(name, plan);
        }
        out
    }

    pub(in crate::config) fn limits(
        &mut self,
        f: RateLimitsFile,
        plans: BTreeMap<String, Plan>,
    ) -> RateLimitConfig {
        let failure_policy = self
            .policy(f.failure_policy.as_deref(), "rate_limits.failure_policy")
            .unwrap_or(FailurePolicy::Local);
        let default_user = PlanFile {
            requests_per_minute: Some(Num::Int(600)),
            ..Default::default()
        };
        let default_auth_ip = PlanFile {
            requests_per_minute: Some(Num::Int(30)),
            requests_per_hour: Some(Num::Int(300)),
            ..Default::default()
        };
        let default_acct_ip = PlanFile {
            requests_per_hour: Some(Num::Int(10)),
            ..Default::default()
        };
        let default_acct = PlanFile {
            requests_per_hour: Some(Num::Int(100)),
            ..Default::default()
        };
        let default_key_failures = PlanFile {
            requests_per_minute: Some(Num::Int(30)),
            requests_per_hour: Some(Num::Int(300)),
            ..Default::default()
        };
        let api_key_failures_per_ip = self.plan(
            f.api_key_failures_per_ip
                .as_ref()
                .unwrap_or(&default_key_failures),
            "rate_limits.api_key_failures_per_ip",
        );
        let default_admin_failures = PlanFile {
            requests_per_minute: Some(Num::Int(10)),
            requests_per_hour: Some(Num::Int(100)),
            ..Default::default()
        };
        let admin_failures_per_ip = self.plan(
            f.admin_failures_per_ip
                .as_ref()
                .unwrap_or(&default_admin_failures),
            "rate_limits.admin_failures_per_ip",
        );
        let user = self.plan(f.user.as_ref().unwrap_or(&default_user), "rate_limits.user");
        let auth_ip = self.plan(
            f.auth_ip.as_ref().unwrap_or(&default_auth_ip),
            "rate_limits.auth_ip",
        );
        let login_failures_per_account_ip = self.plan(
            f.login_failures_per_account_ip
                .as_ref()
                .unwrap_or(&default_acct_ip),
            "rate_limits.login_failures_per_account_ip",
        );
        let login_failures_per_account = self.plan(
            f.login_failures_per_account
                .as_ref()
                .unwrap_or(&default_acct),
            "rate_limits.login_failures_per_account",
        );
        let plans = if plans.is_empty() {
            crate::ratelimit::default_plans()
        } else {
            plans
        };
        let default_plan = f.default_plan.unwrap_or_else(|| "free".into());
        if !plans.contains_key(&default_plan) {
            self.problem(
                "rate_limits.default_plan",
                format!("no plan named {default_plan:?} in plans"),
            );
        }
        RateLimitConfig {
            failure_policy,
            replicas: self.bounded(&f.replicas, &defaults::RATE_LIMITS_REPLICAS),
            lease: Lease {
                requests: self.bounded(&f.lease_requests, &defaults::RATE_LIMITS_LEASE_REQUESTS),
                ms: self.bounded(&f.lease_ms, &defaults::RATE_LIMITS_LEASE_MS),
            },
            user,
            auth_ip,
            login_failures_per_account_ip,
            login_failures_per_account,
            api_key_failures_per_ip,
            admin_failures_per_ip,
            plans,
            default_plan,
        }
    }

    pub(in crate::config) fn policy(
        &mut self,
        v: Option<&str>,
        path: &str,
    ) -> Option<FailurePolicy> {
        match v.map(str::trim) {
            None | Some("") => None,
            Some("open") => Some(FailurePolicy::Open),
            Some("closed") => Some(FailurePolicy::Closed),
            Some("local") => Some(FailurePolicy::Local),
            Some(other) => {
                self.problem(
                    path,
                    format!("must be open, closed or local, got {other:?}"),
                );
                None
            }
        }
    }
}
