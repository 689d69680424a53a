//! First start: the `root` admin (never with a default password) and the JWT secret
//! kept in the database so every instance signs alike.

use billing::wallet::Account;
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait, PaginatorTrait,
};
use store::entities::{setting, user};

use crate::ApiError;
use crate::auth::hash_password;

/// Creates `root` when there are no users. Returns the generated password when none
/// was given, so the caller can print it once.
pub async fn ensure_root(
    db: &DatabaseConnection,
    wallet: &billing::Wallet,
    password: Option<String>,
) -> Result<Option<String>, ApiError> {
    if user::Entity::find().count(db).await? > 0 {
        return Ok(None);
    }
    let (password, generated) = match password.filter(|p| !p.is_empty()) {
        Some(p) => (p, false),
        None => (random_text(18), true),
    };
    let root = user::ActiveModel::enabled(
        "root".to_owned(),
        hash_password(password.clone()).await?,
        store::catalog::Role::Admin,
        "default".to_owned(),
        None,
    )
    .insert(db)
    .await?;
    wallet
        .sync(&[billing::Synced {
            account: Account::User(root.id),
            limit: 0,
            rev: 0,
        }])
        .await?;
    Ok(generated.then_some(password))
}

/// The JWT secret: from the environment when given, else the one stored in the
/// database (generated on first start).
pub async fn jwt_secret(
    db: &DatabaseConnection,
    from_env: Option<String>,
) -> Result<Vec<u8>, ApiError> {
    if let Some(s) = from_env.filter(|s| !s.is_empty()) {
        return Ok(s.into_bytes());
    }
    if let Some(s) = setting::Entity::find_by_id("jwt_secret".to_owned())
        .one(db)
        .await?
    {
        return Ok(s.value.into_bytes());
    }
    let fresh = random_text(48);
    let row = setting::ActiveModel {
        name: Set("jwt_secret".to_owned()),
        value: Set(fresh.clone()),
    };
    if row.insert(db).await.is_err() {
        // Another instance stored one first: use theirs.
        if let Some(s) = setting::Entity::find_by_id("jwt_secret".to_owned())
            .one(db)
            .await?
        {
            return Ok(s.value.into_bytes());
        }
    }
    Ok(fresh.into_bytes())
}

fn random_text(bytes: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}
