//! One module per group of commands; `run` dispatches to them.

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
        Command::Serve(options) => serve::serve(&cli.global, options).await,
        Command::Validate { file } => validate::validate(&file),
        Command::Token(command) => tokens::run(&client(), command).await,
        Command::Repo(command) => repos::repo(&client(), command).await,
        Command::Secret(command) => repos::secret(&client(), command).await,
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
