//! Users, for the people who run the gateway: list and search by email, show, disable and
//! enable (a disabled user's tokens are refused at once, on every replica), delete (credentials
//! and sessions gone), and end every session. Never a password hash in an answer.

use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Admin;
use crate::api::auth::end_sessions;
use crate::body::{self, no_content, Body};
use crate::error::GatewayError;
use crate::store::User;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// A user as the admin API shows it.
#[derive(Serialize)]
pub struct UserView<'a> {
    id: &'a str,
    email: &'a str,
    name: &'a str,
    created_at: u64,
    disabled: bool,
}

impl<'a> From<&'a User> for UserView<'a> {
    fn from(u: &'a User) -> Self {
        UserView {
            id: &u.id,
            email: &u.email,
            name: &u.name,
            created_at: u.created_at,
            disabled: u.disabled,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EditUser {
    disabled: bool,
}

impl Admin<'_> {
    async fn user(&self, id: &str) -> Result<User, GatewayError> {
        self.state
            .records
            .call(self.state.records.get_user(id))
            .await?
            .ok_or(GatewayError::NotFound)
    }

    async fn audit_user(&self, action: &str, user: &str) {
        self.record(action, &format!("user:{user}")).await;
    }

    /// `GET /api/admin/users?email=<prefix>&after=<email>&limit=<n>`: by email, a page at a
    /// time; `next` is the `after` of the following page.
    pub(super) async fn list_users(
        &self,
        query: Option<&str>,
    ) -> Result<Response<Body>, GatewayError> {
        let page = super::page_query(query, "email", DEFAULT_PAGE, MAX_PAGE)?;
        let (prefix, after, limit) = (page.filter.trim().to_lowercase(), page.after, page.limit);
        let users = self
            .state
            .records
            .call(
                self.state
                    .records
                    .list_users(&prefix, after.as_deref(), limit + 1),
            )
            .await?;
        let more = users.len() > limit;
        let page = &users[..users.len().min(limit)];
        let next = more.then(|| page.last().map(|u| u.email.clone())).flatten();
        let views: Vec<UserView> = page.iter().map(UserView::from).collect();
        Ok(body::json(
            StatusCode::OK,
            &json!({"users": views, "next": next}),
            false,
        ))
    }

    pub(super) async fn get_user(&self, id: &str) -> Result<Response<Body>, GatewayError> {
        let user = self.user(id).await?;
        Ok(body::json(StatusCode::OK, &UserView::from(&user), false))
    }

    pub(super) async fn edit_user(
        &self,
        id: &str,
        req: EditUser,
    ) -> Result<Response<Body>, GatewayError> {
        let mut user = self.user(id).await?;
        let was = user.disabled;
        user.disabled = req.disabled;
        let found = self
            .state
            .records
            .call(self.state.records.update_user(&user))
            .await?;
        if !found {
            return Err(GatewayError::NotFound);
        }
        if req.disabled && !was {
            // Its tokens stop now, everywhere; logins and refreshes are refused from here on.
            end_sessions(self.state, self.snap, id).await?;
            self.audit_user("user.disable", id).await;
        } else if was && !req.disabled {
            self.audit_user("user.enable", id).await;
        }
        Ok(body::json(StatusCode::OK, &UserView::from(&user), false))
    }

    pub(super) async fn delete_user(&self, id: &str) -> Result<Response<Body>, GatewayError> {
        let records = &self.state.records;
        match records.call_keep_error(records.delete_user(id)).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(GatewayError::NotFound),
            // A store on ARES's database: ARES keeps data of the user (conversations, memory)
            // and its foreign keys refuse the delete. The admin's to decide: disable instead.
            Err(crate::error::StoreError::Conflict) => {
                return Err(GatewayError::invalid(
                    "the user owns data at ARES, which keeps the account: disable it instead",
                ))
            }
            Err(e) => return Err(e.into()),
        }
        end_sessions(self.state, self.snap, id).await?;
        self.audit_user("user.delete", id).await;
        Ok(no_content())
    }

    pub(super) async fn logout_user(&self, id: &str) -> Result<Response<Body>, GatewayError> {
        self.user(id).await?;
        end_sessions(self.state, self.snap, id).await?;
        self.audit_user("user.logout", id).await;
        Ok(body::json(
            StatusCode::OK,
            &json!({"message": "Every session of the user ended"}),
            false,
        ))
    }
}
