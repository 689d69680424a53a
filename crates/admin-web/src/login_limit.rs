//! The login limit (API.md §2 Auth): failures counted per client IP and per username,
//! atomically and *before* the password is checked, so parallel guesses cannot get
//! more evaluations than the limits allow.
//!
//! Every attempt takes one count from each counter first (`incr` is atomic on both
//! backends) and is refused when that puts it over; a login that succeeds gives its
//! counts back. The username's limit stops guesses spread over many addresses; a
//! client IP that logged in as that user before is exempt from it (its own IP limit
//! still holds), so guesses from elsewhere cannot lock the user out of its usual places.

use std::net::IpAddr;
use std::time::Duration;

use sha2::Digest;
use store::Shared;

use crate::ApiError;

/// Failed logins from one client IP within the window before it is refused.
const MAX_FAILED_PER_IP: i64 = 10;
/// Failed logins for one username, from any IP, within the window.
const MAX_FAILED_PER_USER: i64 = 20;
/// The window both limits count in.
const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long a client IP that logged in as a user stays exempt from that user's limit.
const KNOWN_CLIENT: Duration = Duration::from_secs(30 * 24 * 3600);

/// One admitted login attempt: its counts are taken; [`Attempt::succeeded`] gives
/// them back.
#[must_use = "a successful attempt must give its counts back"]
pub struct Attempt<'a> {
    shared: &'a Shared,
    by_ip: String,
    by_user: String,
    known: String,
}

/// Takes this attempt's counts, or refuses it (`ApiError::RateLimited`) when that puts
/// the client IP or the username over its limit.
pub async fn admit<'a>(
    shared: &'a Shared,
    client: Option<IpAddr>,
    username: &str,
) -> Result<Attempt<'a>, ApiError> {
    let ip = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let user = user_tag(username);
    let attempt = Attempt {
        shared,
        by_ip: format!("login:ip:{ip}"),
        by_user: format!("login:user:{user}"),
        known: format!("login:known:{user}:{ip}"),
    };
    // The IP's count first: an address already over its limit adds nothing to the
    // username's count, so one address cannot lock a user out.
    if shared.incr(&attempt.by_ip, LOGIN_WINDOW).await? > MAX_FAILED_PER_IP {
        return Err(ApiError::RateLimited);
    }
    if shared.incr(&attempt.by_user, LOGIN_WINDOW).await? > MAX_FAILED_PER_USER
        && shared.count(&attempt.known).await? == 0
    {
        return Err(ApiError::RateLimited);
    }
    Ok(attempt)
}

impl Attempt<'_> {
    /// The password was right: the attempt was no failure, and this IP is now known
    /// for this user.
    pub async fn succeeded(self) -> Result<(), ApiError> {
        self.shared.give_back(&self.by_ip).await?;
        self.shared.give_back(&self.by_user).await?;
        self.shared.incr(&self.known, KNOWN_CLIENT).await?;
        Ok(())
    }
}

/// A fixed-size tag of a username for counter keys: case and surrounding space do not
/// make another counter, and a long name does not make a long key.
fn user_tag(username: &str) -> String {
    let name = username.trim().to_lowercase();
    hex::encode(&sha2::Sha256::digest(name.as_bytes())[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[tokio::test]
    async fn one_address_gets_ten_tries_and_cannot_spend_the_usernames_twenty() {
        let shared = Shared::memory();
        for _ in 0..MAX_FAILED_PER_IP {
            let _ = admit(&shared, ip("10.0.0.1"), "root").await.unwrap();
        }
        for _ in 0..50 {
            assert!(admit(&shared, ip("10.0.0.1"), "root").await.is_err());
        }
        // Refused attempts took nothing from root's count.
        assert_eq!(
            shared
                .count(&format!("login:user:{}", user_tag("root")))
                .await
                .unwrap(),
            MAX_FAILED_PER_IP
        );
    }

    #[tokio::test]
    async fn a_success_gives_its_counts_back_and_makes_its_address_known() {
        let shared = Shared::memory();
        admit(&shared, ip("10.0.0.1"), "Root ")
            .await
            .unwrap()
            .succeeded()
            .await
            .unwrap();
        for i in 0..MAX_FAILED_PER_USER {
            let _ = admit(&shared, ip(&format!("10.9.0.{i}")), "root")
                .await
                .unwrap();
        }
        assert!(admit(&shared, ip("10.9.1.1"), "root").await.is_err());
        assert!(admit(&shared, ip("10.0.0.1"), "root").await.is_ok());
        assert!(admit(&shared, ip("10.9.1.1"), "alice").await.is_ok());
    }
}
