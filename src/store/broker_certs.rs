//! Client certificates issued for the broker: the record the broker checks serials against.

use rusqlite::{params, OptionalExtension, Row};

use super::{from_millis, to_millis, Error, Result, Store};
use crate::model::{now, Timestamp};

/// A broker client certificate on record (never its key: the appliance does not keep it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct BrokerCertificate {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// `agent`, `gateway` or `broker-peer`.
    pub kind: String,
    /// Cluster id, gateway id or broker name.
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub issued_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub not_after: Timestamp,
    /// Who asked for it.
    pub issued_by: String,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
    pub revoked_by: Option<String>,
}

const COLUMNS: &str = "SELECT serial, kind, subject, issued_at, not_after, issued_by, revoked_at, revoked_by FROM broker_certificates";

fn row(r: &Row<'_>) -> rusqlite::Result<BrokerCertificate> {
    Ok(BrokerCertificate {
        serial: r.get(0)?,
        kind: r.get(1)?,
        subject: r.get(2)?,
        issued_at: from_millis(r.get(3)?),
        not_after: from_millis(r.get(4)?),
        issued_by: r.get(5)?,
        revoked_at: r.get::<_, Option<i64>>(6)?.map(from_millis),
        revoked_by: r.get(7)?,
    })
}

impl Store {
    /// Records a newly issued certificate.
    pub async fn insert_broker_certificate(
        &self,
        serial: String,
        kind: &'static str,
        subject: String,
        not_after: Timestamp,
        issued_by: String,
    ) -> Result<BrokerCertificate> {
        self.write(move |tx, _| {
            tx.execute(
                "INSERT INTO broker_certificates (serial, kind, subject, issued_at, not_after, issued_by) VALUES (?, ?, ?, ?, ?, ?)",
                params![serial, kind, subject, to_millis(now()), to_millis(not_after), issued_by],
            )
            .map_err(Error::sql("record broker certificate"))?;
            tx.query_row(&format!("{COLUMNS} WHERE serial = ?"), [&serial], row)
                .map_err(Error::sql("read broker certificate"))
        })
        .await
    }

    /// Every broker certificate on record, newest first.
    pub async fn broker_certificates(&self) -> Result<Vec<BrokerCertificate>> {
        self.read(|c| {
            let mut stmt = c
                .prepare(&format!("{COLUMNS} ORDER BY issued_at DESC, serial"))
                .map_err(Error::sql("list broker certificates"))?;
            let rows = stmt
                .query_map([], row)
                .map_err(Error::sql("list broker certificates"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list broker certificates"))?;
            Ok(rows)
        })
        .await
    }

    /// Revokes a certificate (idempotent: revoking twice keeps the first time and actor).
    pub async fn revoke_broker_certificate(
        &self,
        serial: String,
        by: String,
    ) -> Result<BrokerCertificate> {
        self.write(move |tx, _| {
            tx.execute(
                "UPDATE broker_certificates SET revoked_at = ?, revoked_by = ? WHERE serial = ? AND revoked_at IS NULL",
                params![to_millis(now()), by, serial],
            )
            .map_err(Error::sql("revoke broker certificate"))?;
            tx.query_row(&format!("{COLUMNS} WHERE serial = ?"), [&serial], row)
                .optional()
                .map_err(Error::sql("read broker certificate"))?
                .ok_or(Error::NotFound {
                    kind: "broker certificate",
                })
        })
        .await
    }
}
