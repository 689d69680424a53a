//! `GET /api/ledger/verify` (admin): checks balance = Σ ledger for every user.

use actix_web::{HttpResponse, web};

use crate::auth::AuthUser;
use crate::{AdminState, ApiError};

/// Runs the ledger check and reports every difference (amounts in micro-credits).
pub async fn verify(state: web::Data<AdminState>, who: AuthUser) -> Result<HttpResponse, ApiError> {
    who.require_admin()?;
    let report = billing::verify::verify(&state.db).await?;
    if !report.ok {
        tracing::error!(
            differences = report.differences.len(),
            "ledger verification found differences"
        );
    }
    Ok(HttpResponse::Ok().json(report))
}
