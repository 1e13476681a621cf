//! One module per group of commands; `run` dispatches to them.

mod agent;
mod channels;
mod demo;
mod deploy;
mod incidents;
mod init;
mod proxy;
mod repos;
mod runs;
mod serve;
mod tokens;
mod validate;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::client::Client;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let client = || Client::new(&cli.global);
    match cli.command {
        Command::Demo(options) => demo::demo(options).await,
        Command::Init { dir, force } => init::init(dir, force),
        Command::Serve(options) => serve::serve(&cli.global, options).await,
        Command::KeepSockets { socket } => {
            sluice_deploy::sockets::run_keeper(&socket)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(args) => agent::agent(&cli.global, args).await,
        Command::Validate { file } => validate::validate(&file),
        Command::Proxy {
            listen,
            a,
            b,
            weight,
            tls_cert,
            tls_key,
            goals,
        } => {
            let tls = tls_cert.zip(tls_key);
            proxy::run(listen, a, b, weight, tls, &goals).await
        }
        Command::Token(command) => tokens::run(&client(), command).await,
        Command::Repo(command) => repos::repo(&client(), command).await,
        Command::Secret(command) => repos::secret(&client(), command).await,
        Command::Channel(command) => channels::run(&client(), command).await,
        Command::Notify { repo } => repos::notify(&client(), &repo).await,
        Command::Runs {
            repo,
            status,
            limit,
            json,
        } => runs::list(&client(), repo, status, limit, json).await,
        Command::Show { run, json } => runs::show(&client(), run, json).await,
        Command::Logs { run, follow } => runs::logs(&client(), run, follow).await,
        Command::Cancel { run } => runs::cancel(&client(), run).await,
        Command::Agents { json } => agent::list(&client(), json).await,
        Command::Status { service, json } => deploy::status(&client(), service, json).await,
        Command::Releases { service, json } => deploy::releases(&client(), service, json).await,
        Command::Deployments { service, env, json } => {
            deploy::deployments(&client(), service, env, json).await
        }
        Command::Promote {
            service,
            to,
            release,
            json,
        } => deploy::promote(&client(), service, to, release, json).await,
        Command::Promotions { service, all, json } => {
            deploy::promotions(&client(), service, all, json).await
        }
        Command::Approve { id } => deploy::decide(&client(), id, "approve", None).await,
        Command::Reject { id, reason } => {
            deploy::decide(&client(), id, "reject", Some(reason)).await
        }
        Command::Override { id, reason } => {
            deploy::decide(&client(), id, "override", Some(reason)).await
        }
        Command::Rollback { service, env, to } => {
            deploy::rollback(&client(), &service, &env, to).await
        }
        Command::Unpin { service, env } => deploy::unpin(&client(), &service, &env).await,
        Command::Diff {
            service,
            a,
            b,
            json,
        } => deploy::diff(&client(), &service, &a, &b, json).await,
        Command::Ab(command) => deploy::ab(&client(), command).await,
        Command::Instance(crate::cli::InstanceCommand::Logs { id }) => {
            deploy::instance_logs(&client(), &id).await
        }
        Command::Incident(command) => incidents::incident(&client(), command).await,
        Command::Postmortem(command) => incidents::postmortem(&client(), command).await,
        Command::Rule(command) => incidents::rule(&client(), command).await,
        Command::Changes {
            service,
            env,
            kind,
            since,
            limit,
            json,
        } => runs::changes(&client(), service, env, kind, since, limit, json).await,
    }
}
