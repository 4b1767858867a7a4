//! `auditledger token create | list | revoke`: beside a running service (the token table is
//! read on every request, so a revocation holds at once on every instance), or with none.
//! The service appends the access entry of each change within a second (or at its next start).

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Dirs;
use crate::timefmt::now_micros;
use crate::tokens::{TokenSpec, TokenView};

/// What to do with tokens.
#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Make a token and print it on standard output, once (its hash alone is stored).
    Create {
        #[command(flatten)]
        dirs: Dirs,
        /// A role: writer, reader, auditor, privacy_officer or admin. Repeat the flag, or
        /// separate roles with commas, for several.
        #[arg(long = "role", required = true, value_delimiter = ',')]
        roles: Vec<String>,
        /// A name for people (shown in lists; not a secret, and no personal data).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, such as 30m, 12h, 90d, 2w or 1y; default: until revoked.
        #[arg(long)]
        expires: Option<String>,
        /// Limit the token to streams whose id starts with this prefix. Repeat the flag, or
        /// separate prefixes with commas, for several.
        #[arg(long = "streams", value_delimiter = ',')]
        streams: Vec<String>,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        dirs: Dirs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id: every instance refuses it from the next request on.
    Revoke {
        #[command(flatten)]
        dirs: Dirs,
        /// The token's id (16 hex digits; `token list` shows it).
        id: String,
    },
}

/// Runs a token command.
pub async fn run(action: TokenAction) -> anyhow::Result<ExitCode> {
    match action {
        TokenAction::Create {
            dirs,
            roles,
            name,
            expires,
            streams,
        } => {
            let spec = match TokenSpec::parse(name.as_deref(), &roles, &streams, expires.as_deref())
            {
                Ok(spec) => spec,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let (store, lock) = crate::backend::open(&dirs, crate::backend::Access::Admin).await?;
            let (issued, row) = crate::tokens::create(store.as_ref(), &spec, "cli").await?;
            crate::backend::close(store.as_ref(), lock).await;
            eprintln!(
                "created token {} (roles {}{}{}); it is shown once, below: keep it secret",
                row.id,
                row.roles,
                if spec.stream_prefixes.is_empty() {
                    String::new()
                } else {
                    format!(", streams {}", spec.stream_prefixes.join(","))
                },
                row.expires_at
                    .map(|e| format!(", expires {}", crate::timefmt::format_micros(e)))
                    .unwrap_or_default(),
            );
            println!("{}", issued.token.as_str());
            Ok(ExitCode::SUCCESS)
        }
        TokenAction::List { dirs, json } => {
            let (store, lock) = crate::backend::open(&dirs, crate::backend::Access::Admin).await?;
            let rows = store.tokens().await?;
            crate::backend::close(store.as_ref(), lock).await;
            let now = now_micros();
            let views: Vec<TokenView> = rows.iter().map(|r| TokenView::of(r, now)).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<16}  {:<8}  {:<28}  {:<20}  {:<27}  NAME",
                "ID", "STATUS", "ROLES", "STREAMS", "EXPIRES"
            );
            for v in views {
                println!(
                    "{:<16}  {:<8}  {:<28}  {:<20}  {:<27}  {}",
                    v.id,
                    v.status,
                    v.roles.join(","),
                    if v.stream_prefixes.is_empty() {
                        "*".to_owned()
                    } else {
                        v.stream_prefixes.join(",")
                    },
                    v.expires_at.unwrap_or_else(|| "-".to_owned()),
                    v.name
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenAction::Revoke { dirs, id } => {
            if crate::access::token::TokenId::parse(&id).is_none() {
                eprintln!("error: a token id is 16 lowercase hex digits (see `token list`)");
                return Ok(ExitCode::from(2));
            }
            let (store, lock) = crate::backend::open(&dirs, crate::backend::Access::Admin).await?;
            let done = store.revoke_token(&id, "cli", now_micros()).await?;
            crate::backend::close(store.as_ref(), lock).await;
            if done {
                println!("revoked token {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: no active token has id {id}");
                Ok(ExitCode::from(1))
            }
        }
    }
}
