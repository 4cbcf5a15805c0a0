//! [`ThreatStore`] on Redis: behaviour buckets, levels and blocks of a client under its
//! hash tag (one slot), changed by one script call (`scripts/threat.lua`); and an index
//! of blocks in force (a sorted set by end time) for the admin API.
//!
//! The index names blocked clients in clear (an admin must see whom to lift); nothing
//! else here does.

use super::keys;
use super::{Live, RedisStore};
use crate::error::StoreError;
use crate::threat::{Block, BlockPlan, ClientStatus, Observed, ThreatStore};
use ratewarden_core::clock::Clock;
use ratewarden_core::threat::{Batch, Bucket, Level, Signals};
use ratewarden_core::{Nanos, Timestamp};
use redis::{FromRedisValue, RedisError, Value};

/// The script, hashed once.
static THREAT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("../../scripts/threat.lua")));

const BUCKET_FIELDS: usize = 11;

impl<C: Clock> RedisStore<C> {
    async fn threat_call<T: FromRedisValue>(
        &self,
        client: &str,
        args: &[String],
    ) -> Result<T, StoreError> {
        let key = keys::threat_key(&self.settings.key_prefix, client);
        self.run_script(&THREAT, key, args).await
    }

    /// Runs `script` on one key with `args` (through [`RedisStore::on_live`]).
    pub(super) async fn run_script<T: FromRedisValue>(
        &self,
        script: &redis::Script,
        key: String,
        args: &[String],
    ) -> Result<T, StoreError> {
        self.on_live(|live| async move {
            let mut invocation = script.key(key);
            for a in args {
                invocation.arg(a);
            }
            let reply: Result<T, RedisError> = match live {
                Live::Server(mut c) => invocation.invoke_async(&mut c).await,
                Live::Cluster(mut c) => invocation.invoke_async(&mut c).await,
            };
            reply
        })
        .await
    }

    async fn threat_command<T: FromRedisValue>(
        &self,
        command: redis::Cmd,
    ) -> Result<T, StoreError> {
        self.on_live(|live| async move {
            match live {
                Live::Server(mut c) => command.query_async(&mut c).await,
                Live::Cluster(mut c) => command.query_async(&mut c).await,
            }
        })
        .await
    }

    async fn threat_pipe(&self, pipe: redis::Pipeline) -> Result<(), StoreError> {
        self.on_live(|live| async move {
            match live {
                Live::Server(mut c) => pipe.query_async::<()>(&mut c).await,
                Live::Cluster(mut c) => pipe.query_async::<()>(&mut c).await,
            }
        })
        .await
    }

    /// Runs `work` on the connection within the timeout; fails at once while the
    /// limiter's breaker is open, since Redis is known to be down.
    pub(super) async fn on_live<T, F, W>(&self, work: W) -> Result<T, StoreError>
    where
        W: FnOnce(Live) -> F,
        F: std::future::Future<Output = Result<T, RedisError>>,
    {
        if self.breaker.is_open() {
            return Err(StoreError::CircuitOpen(self.retry_after().to_duration()));
        }
        self.bounded(async {
            let live = self.connection.get().await.map_err(|e| self.failed(e))?;
            work(live).await.map_err(|e| self.failed(e))
        })
        .await
    }
}

impl<C: Clock> ThreatStore for RedisStore<C> {
    async fn status(&self, client: &str) -> Result<ClientStatus, StoreError> {
        let reply: Vec<Value> = self.threat_call(client, &["status".into()]).await?;
        let [now, level, until, offence, reasons, blocked] = reply.as_slice() else {
            return Err(protocol("status", &reply));
        };
        let now = micros(int(now)?);
        let (level, level_reasons) = parse_level(&text(level)?);
        let until = int(until)?;
        let block = (until > 0).then(|| -> Result<Block, StoreError> {
            Ok(Block {
                client: text(blocked)?,
                until: micros(until),
                offence: u32::try_from(int(offence)?).unwrap_or(1),
                reasons: split_reasons(&text(reasons)?),
            })
        });
        Ok(ClientStatus {
            level,
            reasons: level_reasons,
            block: block.transpose()?,
            now,
        })
    }

    async fn observe(
        &self,
        client: &str,
        batch: &Batch,
        window: Nanos,
    ) -> Result<Observed, StoreError> {
        let mut args = Vec::with_capacity(16 + batch.endpoints.len());
        args.push("observe".to_owned());
        args.push(window.as_nanos().div_ceil(1000).max(1).to_string());
        args.push((batch.first_at.as_nanos() / 1000).to_string());
        args.push((batch.last_at.as_nanos() / 1000).to_string());
        args.push(format!("{:016x}", batch.first_agent));
        args.push(format!("{:016x}", batch.last_agent));
        args.extend(batch.bucket.fields().iter().map(u64::to_string));
        args.extend(batch.endpoints.iter().map(|e| format!("{e:016x}")));
        let reply: Vec<i64> = self.threat_call(client, &args).await?;
        if reply.len() != 5 + 2 * BUCKET_FIELDS {
            return Err(StoreError::Protocol(format!(
                "threat script: observe answered {} values",
                reply.len()
            )));
        }
        let now = micros(reply[0]);
        let recorded = Level::from_index(u8::try_from(reply[1]).unwrap_or(0));
        let blocked_until = (reply[2] > 0).then(|| micros(reply[2]));
        let current = bucket(&reply[3..3 + BUCKET_FIELDS]);
        let previous = bucket(&reply[3 + BUCKET_FIELDS..3 + 2 * BUCKET_FIELDS]);
        let endpoints = (
            reply[3 + 2 * BUCKET_FIELDS].max(0) as f64,
            reply[4 + 2 * BUCKET_FIELDS].max(0) as f64,
        );
        let elapsed = Nanos(now.as_nanos() % window.as_nanos().max(1));
        Ok(Observed {
            signals: Signals::from_buckets(&current, &previous, elapsed, window, endpoints),
            recorded,
            blocked_until,
            now,
        })
    }

    async fn failing_neighbours(
        &self,
        network: &str,
        address: Option<u64>,
        window: Nanos,
    ) -> Result<f64, StoreError> {
        let mut args = vec![
            "neighbours".to_owned(),
            window.as_nanos().div_ceil(1000).max(1).to_string(),
        ];
        args.extend(address.map(|a| format!("{a:016x}")));
        let reply: Vec<i64> = self.threat_call(network, &args).await?;
        match reply.as_slice() {
            [_, members] => Ok((*members).max(0) as f64),
            _ => Err(StoreError::Protocol(format!(
                "threat script: neighbours answered {} values",
                reply.len()
            ))),
        }
    }

    async fn set_level(
        &self,
        client: &str,
        expected: Level,
        level: Level,
        reasons: &[String],
        window: Nanos,
    ) -> Result<bool, StoreError> {
        let args = [
            "set_level".to_owned(),
            expected.index().to_string(),
            level.index().to_string(),
            reasons.join(","),
            window.as_nanos().div_ceil(1_000_000).max(1).to_string(),
        ];
        let set: i64 = self.threat_call(client, &args).await?;
        Ok(set == 1)
    }

    async fn block(&self, client: &str, plan: &BlockPlan) -> Result<(Block, bool), StoreError> {
        let mut args = vec![
            "block".to_owned(),
            (plan.forget_after.as_nanos() / 1000).to_string(),
            plan.reasons.join(","),
            client.to_owned(),
        ];
        args.extend(
            plan.ladder
                .iter()
                .map(|l| l.as_nanos().div_ceil(1000).to_string()),
        );
        let reply: Vec<Value> = self.threat_call(client, &args).await?;
        let [until, offence, reasons, blocked, made, now] = reply.as_slice() else {
            return Err(protocol("block", &reply));
        };
        let block = Block {
            client: text(blocked)?,
            until: micros(int(until)?),
            offence: u32::try_from(int(offence)?).unwrap_or(1),
            reasons: split_reasons(&text(reasons)?),
        };
        if int(made)? == 1 {
            let index = keys::block_index(&self.settings.key_prefix);
            let mut pipe = redis::pipe();
            pipe.cmd("ZADD")
                .arg(&index)
                .arg(block.until.as_nanos() / 1_000_000)
                .arg(client)
                .ignore()
                // Ended blocks leave the index here too, by the server's clock, so it
                // stays as small as the set of blocks in force.
                .cmd("ZREMRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(int(now)? / 1000)
                .ignore();
            // The index only serves listings: a failure here leaves the block in force.
            if let Err(e) = self.threat_pipe(pipe).await {
                tracing::warn!(error = %e, "block recorded, but not in the admin index");
            }
        }
        Ok((block, int(made)? == 1))
    }

    async fn lift(&self, client: &str, window: Nanos) -> Result<bool, StoreError> {
        let args = [
            "lift".to_owned(),
            window.as_nanos().div_ceil(1000).max(1).to_string(),
        ];
        let had: i64 = self.threat_call(client, &args).await?;
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(keys::block_index(&self.settings.key_prefix))
            .arg(client);
        let _: i64 = self.threat_command(zrem).await?;
        Ok(had == 1)
    }

    async fn blocks(&self) -> Result<Vec<Block>, StoreError> {
        let index = keys::block_index(&self.settings.key_prefix);
        // The server's clock, as the blocks' end times are.
        let (seconds, micros): (u64, u64) = self.threat_command(redis::cmd("TIME")).await?;
        let now_ms = seconds * 1000 + micros / 1000;
        let mut trim = redis::cmd("ZREMRANGEBYSCORE");
        trim.arg(&index).arg("-inf").arg(now_ms);
        let _: i64 = self.threat_command(trim).await?;
        let mut range = redis::cmd("ZRANGE");
        range.arg(&index).arg(0).arg(-1);
        let clients: Vec<String> = self.threat_command(range).await?;
        let mut blocks = Vec::with_capacity(clients.len());
        for client in clients {
            if let Some(block) = self.status(&client).await?.block {
                blocks.push(block);
            }
        }
        blocks.sort_by_key(|b| b.until);
        Ok(blocks)
    }
}

fn bucket(v: &[i64]) -> Bucket {
    let u = |i: usize| u64::try_from(v.get(i).copied().unwrap_or(0)).unwrap_or(0);
    Bucket {
        requests: u(0),
        errors: u(1),
        auth_failures: u(2),
        limited: u(3),
        automation: u(4),
        spoofed: u(5),
        agent_changes: u(6),
        gaps: u(7),
        gap_sum_ms: u(8),
        gap_squares_ms: u(9),
        stuffing: u(10),
    }
}

fn parse_level(record: &str) -> (Level, Vec<String>) {
    match record.split_once('|') {
        Some((level, reasons)) => (
            Level::from_index(level.parse().unwrap_or(0)),
            split_reasons(reasons),
        ),
        None => (Level::Normal, Vec::new()),
    }
}

fn split_reasons(joined: &str) -> Vec<String> {
    joined
        .split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(super) fn micros(us: i64) -> Timestamp {
    Timestamp(u64::try_from(us).unwrap_or(0).saturating_mul(1000))
}

pub(super) fn int(v: &Value) -> Result<i64, StoreError> {
    i64::from_redis_value(v.clone())
        .map_err(|e| StoreError::Protocol(format!("threat script: {e}")))
}

fn text(v: &Value) -> Result<String, StoreError> {
    String::from_redis_value(v.clone())
        .map_err(|e| StoreError::Protocol(format!("threat script: {e}")))
}

fn protocol(op: &str, reply: &[Value]) -> StoreError {
    StoreError::Protocol(format!("threat script: unexpected {op} reply {reply:?}"))
}
