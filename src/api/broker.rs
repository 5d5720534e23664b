//! The message broker's administration: client certificates for agents, gateways and broker
//! peers (issue, list, revoke) and topic and consumer-group statistics. System admins only:
//! topic names and certificates span every tenant.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Auth};
use super::AppState;
use crate::broker::access::{valid_subject, Peer, PeerKind};
use crate::broker::peers::{peer_uri, KnownCert};
use crate::broker::{GroupStats, TopicStats};
use crate::model::{Invalid, Principal};
use crate::store::BrokerCertificate;

/// Longest validity of a broker client certificate, in days (10 years).
const MAX_DAYS: i64 = 3650;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_certificates, issue_certificate))
        .routes(routes!(revoke_certificate))
        .routes(routes!(list_topics))
        .routes(routes!(list_groups))
}

fn require_system_admin(p: &Principal) -> Result<(), ApiError> {
    if p.is_system_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "the broker's certificates and statistics are for system admins".into(),
        ))
    }
}

/// Body of `POST /v1/broker/certificates`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBrokerCertificate {
    /// `agent` (subject: the cluster id), `gateway` (subject: the gateway id) or
    /// `broker-peer` (subject: the broker's name).
    pub kind: String,
    pub subject: String,
    /// Validity in days; default 365, at most 3650.
    pub days: Option<i64>,
}

/// A newly issued certificate with its private key. The key is shown only in this answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedBrokerCertificate {
    pub certificate: BrokerCertificate,
    pub certificate_pem: String,
    pub private_key_pem: String,
    /// The appliance CA, which the broker's own certificate chains to.
    pub ca_pem: String,
}

/// Issue a client certificate for the broker.
#[utoipa::path(post, path = "/v1/broker/certificates", tag = "broker", request_body = NewBrokerCertificate,
    responses((status = 201, body = IssuedBrokerCertificate), (status = 400, body = Problem), (status = 403, body = Problem)))]
async fn issue_certificate(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<NewBrokerCertificate>,
) -> Result<(StatusCode, Json<IssuedBrokerCertificate>), ApiError> {
    require_system_admin(&p)?;
    let kind = PeerKind::parse(&req.kind).ok_or_else(|| {
        ApiError::Invalid(Invalid::new(
            "kind",
            format!(
                "{:?} is not a certificate kind: use agent, gateway or broker-peer",
                req.kind
            ),
        ))
    })?;
    if !valid_subject(&req.subject) {
        return Err(ApiError::Invalid(Invalid::new(
            "subject",
            "use 1 to 64 letters, digits, '-' and '_' (a cluster id, gateway id or broker name)",
        )));
    }
    if kind == PeerKind::Agent {
        // An agent certificate names a cluster that exists.
        app.store.cluster(&req.subject).await.map_err(|e| match e {
            crate::store::Error::NotFound { .. } => ApiError::Invalid(Invalid::new(
                "subject",
                format!(
                    "no cluster has id {:?}: give the id of the agent's cluster",
                    req.subject
                ),
            )),
            other => other.into(),
        })?;
    }
    let days = req.days.unwrap_or(365);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::Invalid(Invalid::new(
            "days",
            format!("{days} is out of range: give 1 to {MAX_DAYS}"),
        )));
    }
    let peer = Peer::Certified {
        kind,
        subject: req.subject.clone(),
    };
    let issued = app
        .pki
        .issue_client_certificate(
            &format!("palisade {} {}", kind.as_str(), req.subject),
            &peer_uri(&peer),
            days,
            kind == PeerKind::BrokerPeer,
        )
        .map_err(ApiError::internal)?;
    let record = app
        .store
        .insert_broker_certificate(
            issued.serial.clone(),
            kind.as_str(),
            req.subject.clone(),
            issued.not_after,
            p.username.clone(),
        )
        .await?;
    app.broker_peers.insert(
        issued.serial,
        KnownCert {
            kind,
            subject: req.subject,
            revoked: false,
        },
    );
    Ok((
        StatusCode::CREATED,
        Json(IssuedBrokerCertificate {
            certificate: record,
            certificate_pem: issued.cert_pem,
            private_key_pem: issued.key_pem,
            ca_pem: app.ca_pem.clone(),
        }),
    ))
}

/// Every broker client certificate issued, newest first.
#[utoipa::path(get, path = "/v1/broker/certificates", tag = "broker",
    responses((status = 200, body = Vec<BrokerCertificate>), (status = 403, body = Problem)))]
async fn list_certificates(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<BrokerCertificate>>, ApiError> {
    require_system_admin(&p)?;
    Ok(Json(app.store.broker_certificates().await?))
}

/// Revoke a certificate: new connections with it are refused and its open subscriptions end.
#[utoipa::path(post, path = "/v1/broker/certificates/{serial}/revoke", tag = "broker",
    params(("serial" = String, Path, description = "Serial number, hex")),
    responses((status = 200, body = BrokerCertificate), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn revoke_certificate(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(serial): Path<String>,
) -> Result<Json<BrokerCertificate>, ApiError> {
    require_system_admin(&p)?;
    let serial = serial.to_ascii_lowercase();
    let record = app
        .store
        .revoke_broker_certificate(serial.clone(), p.username.clone())
        .await?;
    app.broker_peers.revoke(&serial);
    Ok(Json(record))
}

/// Topics with their offsets, depth and size.
#[utoipa::path(get, path = "/v1/broker/topics", tag = "broker",
    responses((status = 200, body = Vec<TopicStats>), (status = 403, body = Problem)))]
async fn list_topics(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<TopicStats>>, ApiError> {
    require_system_admin(&p)?;
    Ok(Json(app.broker.topic_stats()))
}

/// Active consumer groups per topic: members, position, lag, in flight, redeliveries and
/// dead letters.
#[utoipa::path(get, path = "/v1/broker/groups", tag = "broker",
    responses((status = 200, body = Vec<GroupStats>), (status = 403, body = Problem)))]
async fn list_groups(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<GroupStats>>, ApiError> {
    require_system_admin(&p)?;
    Ok(Json(app.broker.group_stats()))
}
