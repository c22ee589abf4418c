//! PgBouncer's `auth_user` + `auth_query`: a user missing from `auth_file` is looked up in
//! Postgres at login, over a server of the `auth_user`'s own pool in the database the client
//! asked for (or `auth_dbname`'s).
//!
//! The query runs over the extended protocol with the user name as its one parameter, so no
//! startup value can change the SQL. It returns the role's name and secret (PgBouncer's
//! default query gives NULL for a role past its `rolvaliduntil`); the client is then checked
//! against that secret exactly as against an auth file's (md5 and SCRAM secrets both work, and
//! with SCRAM the client's proven keys log in to the server). No row: the user is unknown, and
//! the login fails as for a wrong password, so an outsider learns nothing.

use bytes::BytesMut;
use postgres_protocol::message::{backend, frontend};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::App;
use crate::auth::{Secret, User};
use crate::config::Config;
use crate::error::{PoolerError, Result};
use crate::server::ServerConn;

/// The user `name` as `auth_query` finds it; None when it returns no row.
/// The `auth_user`, `auth_query` and `auth_dbname` in force for clients of `database`: its
/// entry's, else the global ones; None when no `auth_user` is set for it.
pub fn settings(config: &Config, database: &str) -> Option<(String, String, String)> {
    let p = &config.pooler;
    let db = config.database(database);
    let pick = |own: Option<&String>, global: &str| own.cloned().unwrap_or_else(|| global.into());
    let user = pick(db.as_ref().and_then(|d| d.auth_user.as_ref()), &p.auth_user);
    if user.is_empty() {
        return None;
    }
    let query = pick(
        db.as_ref().and_then(|d| d.auth_query.as_ref()),
        &p.auth_query,
    );
    let dbname = pick(
        db.as_ref().and_then(|d| d.auth_dbname.as_ref()),
        &p.auth_dbname,
    );
    Some((user, query, dbname))
}

pub async fn lookup(
    app: &Arc<App>,
    config: &Config,
    database: &str,
    name: &str,
) -> Result<Option<Arc<User>>> {
    let Some((auth_user, auth_query, auth_dbname)) = settings(config, database) else {
        return Ok(None);
    };
    let auth_db_name = if auth_dbname.is_empty() {
        database
    } else {
        auth_dbname.as_str()
    };
    let Some(db) = config.database(auth_db_name) else {
        // An unknown database: the login fails after the password exchange, as without
        // auth_query (the client is told nothing it could not learn by asking for it).
        return Ok(None);
    };
    let auth_user = app
        .users()
        .get(&auth_user)
        .unwrap_or_else(|| Arc::new(User::new(&auth_user, Secret::Plain(String::new()))));
    let pool = app.pool(auth_db_name, &db, &auth_user);
    let mut server = pool.checkout().await?;
    let bound = server.query_bound;
    let found = tokio::time::timeout(bound, run(&mut server, &auth_query, name)).await;
    let row = match found {
        Ok(Ok(row)) => {
            pool.checkin(server);
            row
        }
        Ok(Err(e)) => {
            pool.discard(server);
            return Err(e);
        }
        Err(_) => {
            pool.discard(server);
            return Err(PoolerError::AuthQuery(format!(
                "no answer within {}s",
                bound.as_secs_f64()
            )));
        }
    };
    Ok(row.map(|secret| {
        // NULL: the role exists but may not log in with a password (expired, or none set).
        // An empty secret never logs in (see `authenticate_client`).
        let secret = secret.map(|s| Secret::parse(&s));
        Arc::new(User::new(
            name,
            secret.unwrap_or(Secret::Plain(String::new())),
        ))
    }))
}

/// Parse/Bind/Execute/Sync with `$1 = name`; the second column of the first row, if any row.
/// The server is left idle (every reply read up to ReadyForQuery), or the error says it is not.
async fn run(server: &mut ServerConn, sql: &str, name: &str) -> Result<Option<Option<String>>> {
    let mut out = BytesMut::with_capacity(sql.len() + name.len() + 64);
    frontend::parse("", sql, [0u32; 0], &mut out)?;
    frontend::bind(
        "",
        "",
        [0i16; 0],
        [name],
        |v, buf| {
            buf.extend_from_slice(v.as_bytes());
            Ok(postgres_protocol::IsNull::No)
        },
        [0i16; 0],
        &mut out,
    )
    .map_err(|_| PoolerError::AuthQuery("cannot encode the user name".into()))?;
    frontend::execute("", 1, &mut out)?;
    frontend::close(b'S', "", &mut out)?;
    frontend::sync(&mut out);
    server.stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut row: Option<Option<String>> = None;
    let mut failure = None;
    loop {
        let msg = loop {
            if let Some(msg) = backend::Message::parse(&mut buf)? {
                break msg;
            }
            if server.stream.read_buf(&mut buf).await? == 0 {
                return Err(PoolerError::ServerGone);
            }
        };
        match msg {
            backend::Message::DataRow(body) if row.is_none() => {
                use fallible_iterator::FallibleIterator;
                let mut values = Vec::new();
                let mut ranges = body.ranges();
                while let Some(r) = ranges.next()? {
                    values.push(r.map(|r| {
                        String::from_utf8_lossy(&body.buffer()[r.start..r.end]).into_owned()
                    }));
                }
                let Some(secret) = values.get(1) else {
                    failure = Some("auth_query must return two columns (name, secret)".into());
                    continue;
                };
                row = Some(secret.clone());
            }
            backend::Message::ErrorResponse(body) => {
                use fallible_iterator::FallibleIterator;
                let mut fields = body.fields();
                let mut message = String::new();
                while let Some(f) = fields.next()? {
                    if f.type_() == b'M' {
                        message = String::from_utf8_lossy(f.value_bytes()).into_owned();
                    }
                }
                failure = Some(message);
            }
            backend::Message::ReadyForQuery(body) => {
                if body.status() != b'I' || !buf.is_empty() {
                    return Err(PoolerError::ServerProtocol(
                        "auth_query left the server busy".into(),
                    ));
                }
                if let Some(message) = failure {
                    return Err(PoolerError::AuthQuery(message));
                }
                return Ok(row);
            }
            backend::Message::ParameterStatus(body) => {
                server.params.set(body.name()?, body.value()?);
            }
            backend::Message::CopyInResponse(_) => {
                return Err(PoolerError::ServerProtocol(
                    "auth_query started COPY".into(),
                ));
            }
            _ => {}
        }
    }
}
