//! The login limit (API.md §2 Auth): failures counted per client IP and per username,
//! atomically and *before* the password is checked, so parallel guesses cannot get
//! more evaluations than the limits allow.
//!
//! Every attempt takes one count from each counter first (`incr` is atomic on both
//! backends) and is refused when that puts it over; a login that succeeds gives its
//! counts back. The username's limit stops guesses spread over many addresses; a
//! client IP that logged in as that user before is exempt from it (its own IP limit
//! still holds), so guesses from elsewhere cannot lock the user out of its usual places.
//! An IPv6 client is counted by its /64, so one host cannot spread its guesses over
//! the addresses of its own network. When a username is locked out of everywhere (a
//! fresh install knows no address), the operator clears its count with
//! `gateway login unlock <username>` ([`unlock`]).

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
        by_ip: format!("login:ip:{}", ip_bucket(client)),
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

/// Clears the username's failure count, so it can log in from anywhere again (the
/// operator's `gateway login unlock`). Counts per client IP are left as they are.
pub async fn unlock(shared: &Shared, username: &str) -> Result<(), ApiError> {
    shared
        .reset(&format!("login:user:{}", user_tag(username)))
        .await?;
    Ok(())
}

/// The per-IP counter's bucket: an IPv4 address, or the /64 network of an IPv6 one (a
/// single host usually holds a whole /64, so its addresses are one client).
fn ip_bucket(client: Option<IpAddr>) -> String {
    match client.map(|ip| ip.to_canonical()) {
        None => "unknown".to_owned(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let prefix = u128::from(v6) & !(u128::from(u64::MAX));
            format!("{}/64", std::net::Ipv6Addr::from(prefix))
        }
    }
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
    async fn the_addresses_of_one_ipv6_64_share_one_count() {
        let shared = Shared::memory();
        for i in 0..MAX_FAILED_PER_IP {
            let addr = format!("2001:db8:1:2:{i:x}::1");
            let _ = admit(&shared, ip(&addr), "root").await.unwrap();
        }
        assert!(
            admit(&shared, ip("2001:db8:1:2:ffff:1:2:3"), "root")
                .await
                .is_err()
        );
        // The next /64, and IPv4 addresses, count on their own.
        assert!(admit(&shared, ip("2001:db8:1:3::1"), "root").await.is_ok());
        assert!(admit(&shared, ip("10.0.0.2"), "root").await.is_ok());
    }

    #[tokio::test]
    async fn an_unlock_clears_the_usernames_count_only() {
        let shared = Shared::memory();
        for i in 0..MAX_FAILED_PER_USER {
            let _ = admit(&shared, ip(&format!("10.9.0.{i}")), "root")
                .await
                .unwrap();
        }
        assert!(admit(&shared, ip("10.9.1.1"), "root").await.is_err());
        unlock(&shared, " Root").await.unwrap();
        assert!(admit(&shared, ip("10.9.1.2"), "root").await.is_ok());
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
