//! The PostgreSQL side of the state every node shares and that once lived in one node's memory: failure counters, request budgets, device proof ids and the token-signing keys.
//!
//! Free functions over a pool's client, called from [`PostgresStore`](super::PostgresStore)'s
//! [`Store`](super::Store) methods. Each is one statement (a spend from several budgets is one
//! transaction), atomic across nodes by PostgreSQL's row locks: an `INSERT ... ON CONFLICT`
//! locks the row it finds, so two nodes' updates of one counter or budget run one after the
//! other, each on the other's result.

use deadpool_postgres::GenericClient;
use time::OffsetDateTime;

use super::super::sqlite::{each_once, from_unix_micros, micros, token_keys_conflict, unix_micros};
use super::super::{BudgetUse, FailureCount, StoreError, StoredTokenKeys};
use super::utc;

/// Version 2: failure counters, request budgets (GCRA horizons in microseconds since
/// 1970), device proof ids seen, and the token-signing key set (SQLite's migration 9).
pub(super) const MIGRATION_2: &str = "
CREATE TABLE flow_failures (
    key text PRIMARY KEY NOT NULL,
    count integer NOT NULL,
    last_at timestamptz NOT NULL
);
CREATE INDEX flow_failures_last_at ON flow_failures (last_at);
CREATE TABLE flow_budgets (
    kind text NOT NULL,
    key text NOT NULL,
    horizon bigint NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX flow_budgets_horizon ON flow_budgets (horizon);
CREATE TABLE device_proofs (
    id text PRIMARY KEY NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX device_proofs_expires_at ON device_proofs (expires_at);
CREATE TABLE token_keys (
    id integer PRIMARY KEY NOT NULL CHECK (id = 1),
    version bigint NOT NULL,
    keys text NOT NULL,
    updated_at timestamptz NOT NULL
);
";

/// [`Store::record_failures`](super::super::Store::record_failures).
pub(super) async fn record_failures(
    client: &impl GenericClient,
    keys: &[String],
    now: OffsetDateTime,
    forget_before: OffsetDateTime,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO flow_failures (key, count, last_at)
             SELECT key, 1, $2 FROM unnest($1::text[]) AS key
             ON CONFLICT (key) DO UPDATE SET
                 count = CASE WHEN flow_failures.last_at < $3 THEN 1
                              ELSE flow_failures.count + 1 END,
                 last_at = $2",
        )
        .await?;
    client
        .execute(
            &statement,
            &[&each_once(keys), &utc(now)?, &utc(forget_before)?],
        )
        .await?;
    Ok(())
}

/// [`Store::failures`](super::super::Store::failures).
pub(super) async fn failures(
    client: &impl GenericClient,
    keys: &[String],
) -> Result<Vec<FailureCount>, StoreError> {
    let statement = client
        .prepare_cached("SELECT key, count, last_at FROM flow_failures WHERE key = ANY($1)")
        .await?;
    let mut counts = Vec::new();
    for row in client.query(&statement, &[&keys]).await? {
        let count: i32 = row.try_get("count")?;
        counts.push(FailureCount {
            key: row.try_get("key")?,
            count: u32::try_from(count).unwrap_or(0),
            last: row.try_get("last_at")?,
        });
    }
    Ok(counts)
}

/// [`Store::clear_failures`](super::super::Store::clear_failures).
pub(super) async fn clear_failures(
    client: &impl GenericClient,
    keys: &[String],
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached("DELETE FROM flow_failures WHERE key = ANY($1)")
        .await?;
    client.execute(&statement, &[&keys]).await?;
    Ok(())
}

/// Spends from one budget in one statement: `Ok(None)` when spent, else its horizon
/// (microseconds). The row the conflict finds stays locked until the transaction ends.
async fn spend_one(
    client: &impl GenericClient,
    kind: &str,
    key: &str,
    now: i64,
    step: i64,
    limit: i64,
) -> Result<Option<i64>, StoreError> {
    let spend = client
        .prepare_cached(
            "INSERT INTO flow_budgets (kind, key, horizon) VALUES ($1, $2, $3::bigint + $4::bigint)
             ON CONFLICT (kind, key) DO UPDATE
                 SET horizon = greatest(flow_budgets.horizon, $3::bigint) + $4::bigint
                 WHERE greatest(flow_budgets.horizon, $3::bigint) + $4::bigint <= $5::bigint
             RETURNING horizon",
        )
        .await?;
    if client
        .query_opt(&spend, &[&kind, &key, &now, &step, &limit])
        .await?
        .is_some()
    {
        return Ok(None);
    }
    let read = client
        .prepare_cached("SELECT horizon FROM flow_budgets WHERE kind = $1 AND key = $2")
        .await?;
    let horizon: Option<i64> = client
        .query_opt(&read, &[&kind, &key])
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    Ok(Some(horizon.unwrap_or(now)))
}

/// [`Store::spend_budget`](super::super::Store::spend_budget): one statement for one key, a
/// transaction (rolled back when a budget has no room) for several.
pub(super) async fn spend_budget(
    client: &mut deadpool_postgres::Object,
    kind: &str,
    keys: &[String],
    now: OffsetDateTime,
    step: std::time::Duration,
    tolerance: std::time::Duration,
) -> Result<BudgetUse, StoreError> {
    let now = unix_micros(now);
    let (step, limit) = (micros(step), now.saturating_add(micros(tolerance)));
    if step > limit.saturating_sub(now) {
        // No room even in a full bucket (a budget of nothing): nothing to write.
        return Ok(BudgetUse::Empty {
            horizon: from_unix_micros(now)?,
        });
    }
    let keys = each_once(keys);
    let empty = if let [key] = keys.as_slice() {
        spend_one(&*client, kind, key, now, step, limit).await?
    } else {
        let transaction = client.transaction().await?;
        let mut furthest: Option<i64> = None;
        for key in &keys {
            if let Some(horizon) = spend_one(&transaction, kind, key, now, step, limit).await? {
                furthest = Some(furthest.map_or(horizon, |seen| seen.max(horizon)));
            }
        }
        if furthest.is_none() {
            transaction.commit().await?;
        } else {
            transaction.rollback().await?;
        }
        furthest
    };
    match empty {
        None => Ok(BudgetUse::Spent),
        Some(horizon) => Ok(BudgetUse::Empty {
            horizon: from_unix_micros(horizon)?,
        }),
    }
}

/// [`Store::use_proof_id`](super::super::Store::use_proof_id).
pub(super) async fn use_proof_id(
    client: &impl GenericClient,
    id: &str,
    now: OffsetDateTime,
    remember_until: OffsetDateTime,
) -> Result<bool, StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO device_proofs (id, expires_at) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at
                 WHERE device_proofs.expires_at < $3",
        )
        .await?;
    let changed = client
        .execute(&statement, &[&id, &utc(remember_until)?, &utc(now)?])
        .await?;
    Ok(changed > 0)
}

/// [`Store::purge_flow_control`](super::super::Store::purge_flow_control), in one statement.
pub(super) async fn purge_flow_control(
    client: &impl GenericClient,
    now: OffsetDateTime,
    failures_before: OffsetDateTime,
) -> Result<u64, StoreError> {
    let statement = client
        .prepare_cached(
            "WITH budgets AS (DELETE FROM flow_budgets WHERE horizon < $1 RETURNING 1),
                  proofs AS (DELETE FROM device_proofs WHERE expires_at < $2 RETURNING 1),
                  failures AS (DELETE FROM flow_failures WHERE last_at < $3 RETURNING 1)
             SELECT (SELECT count(*) FROM budgets) + (SELECT count(*) FROM proofs)
                  + (SELECT count(*) FROM failures)",
        )
        .await?;
    let purged: i64 = client
        .query_one(
            &statement,
            &[&unix_micros(now), &utc(now)?, &utc(failures_before)?],
        )
        .await?
        .try_get(0)?;
    Ok(u64::try_from(purged).unwrap_or(0))
}

/// [`Store::token_keys`](super::super::Store::token_keys).
pub(super) async fn token_keys(
    client: &impl GenericClient,
) -> Result<Option<StoredTokenKeys>, StoreError> {
    let statement = client
        .prepare_cached("SELECT version, keys FROM token_keys WHERE id = 1")
        .await?;
    client
        .query_opt(&statement, &[])
        .await?
        .map(|row| {
            Ok(StoredTokenKeys {
                version: row.try_get("version")?,
                keys: zeroize::Zeroizing::new(row.try_get("keys")?),
            })
        })
        .transpose()
}

/// [`Store::replace_token_keys`](super::super::Store::replace_token_keys).
pub(super) async fn replace_token_keys(
    client: &impl GenericClient,
    keys: &str,
    replaces: Option<i64>,
    now: OffsetDateTime,
) -> Result<i64, StoreError> {
    let now = utc(now)?;
    let changed = match replaces {
        None => {
            let statement = client
                .prepare_cached(
                    "INSERT INTO token_keys (id, version, keys, updated_at) VALUES (1, 1, $1, $2)
                     ON CONFLICT (id) DO NOTHING",
                )
                .await?;
            client.execute(&statement, &[&keys, &now]).await?
        }
        Some(version) => {
            let statement = client
                .prepare_cached(
                    "UPDATE token_keys SET version = version + 1, keys = $1, updated_at = $2
                     WHERE id = 1 AND version = $3",
                )
                .await?;
            client.execute(&statement, &[&keys, &now, &version]).await?
        }
    };
    if changed == 0 {
        return Err(token_keys_conflict(replaces));
    }
    Ok(replaces.map_or(1, |version| version + 1))
}
