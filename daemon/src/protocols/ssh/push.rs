//! A `git push` judged by ref, as its bytes pass from the agent to `git-receive-pack`.
//!
//! A push sends its command list (`old new ref` per update, capabilities on the first
//! line, a flush), perhaps push options, then a pack. Deletions and creations are
//! known from the list; whether an update is a fast-forward only from the pack
//! ([`super::pack`]). So:
//! - a push whose updates are all known from the list is judged before any byte of it
//!   reaches the server;
//! - otherwise the push is first asked whether it could pass at all if every update
//!   were a fast-forward (if not, it is refused before anything is forwarded); then
//!   the list and the pack go on to the server while the pack is read, all but the
//!   pack's trailer. Once the pack is read the push is judged with each update's real
//!   kind; only an allowed push gets its trailer, so a refused one never completes on
//!   the server (receive-pack sees a truncated pack and updates nothing).
//!
//! An update not proven a fast-forward is a force-push, `dangerous`, like a deletion.
//! A refused push is answered with receive-pack's own report-status (`ng REF REASON`)
//! when the client asked for one, so `git push` prints `[remote rejected]` with why.

use bytes::Bytes;

use super::{
    command::{self, PushCommands, PushedRef, RefChange},
    pack::{Ancestry, ObjectFormat, PackScanner},
    proxy::{Gate, Request, judge_and_record},
};
use crate::policy::Operation;

/// Why a push was refused, and what the agent's `git` is told.
#[derive(Debug)]
pub struct Refused {
    pub message: String,
    /// receive-pack's report for a client that asked for one.
    pub report: Option<Vec<u8>>,
    /// Not refused: the server closed the channel (receive-pack failed on its own),
    /// and what it said is the agent's to read.
    pub server_gone: bool,
}

impl Refused {
    fn plain(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            report: None,
            server_gone: false,
        }
    }
}

enum Stage {
    /// Reading the command list.
    Commands(Vec<u8>),
    /// Forwarding push options up to their flush; then the pack.
    Options {
        commands: PushCommands,
        buffer: Vec<u8>,
    },
    /// Forwarding the pack but its trailer.
    Pack {
        commands: PushCommands,
        scanner: Box<PackScanner>,
    },
    /// Judged and allowed: everything goes through.
    Passing,
}

/// The agent → server side of a `git-receive-pack` channel.
pub struct PushGuard {
    /// The exec's command line (what `ssh = { commands }` globs match).
    line: String,
    stage: Stage,
}

impl PushGuard {
    pub fn new(line: String) -> Self {
        Self {
            line,
            stage: Stage::Commands(Vec::new()),
        }
    }

    /// Takes the agent's next bytes; forwards what may go on. `Err`: the push is
    /// refused (and recorded); the caller closes the server's channel.
    pub async fn relay<G: Gate>(
        &mut self,
        gate: &G,
        data: &[u8],
        upstream: &russh::ChannelWriteHalf<russh::client::Msg>,
    ) -> Result<(), Refused> {
        let mut data = data.to_vec();
        loop {
            match &mut self.stage {
                Stage::Passing => return forward(upstream, data).await,
                Stage::Commands(buffer) => {
                    buffer.extend_from_slice(&data);
                    let commands = match command::parse_ref_updates(buffer) {
                        Ok(None) if buffer.len() <= command::MAX_COMMAND_LIST => return Ok(()),
                        Ok(Some(commands)) => commands,
                        Ok(None) | Err(_) => {
                            return Err(Refused::plain("protocol_error: unreadable push commands"));
                        }
                    };
                    let mut buffer = std::mem::take(buffer);
                    data = buffer.split_off(commands.len);
                    if commands.updates.is_empty() {
                        // Nothing to update: nothing to judge beyond the exec.
                        self.stage = Stage::Passing;
                        forward(upstream, buffer).await?;
                        continue;
                    }
                    let known = known_changes(&commands);
                    if known.iter().all(Option::is_some) {
                        let pushed = pushed_refs(&commands, known.into_iter().flatten());
                        judge(gate, push_request(&self.line, pushed), &commands).await?;
                        self.stage = Stage::Passing;
                        forward(upstream, buffer).await?;
                        continue;
                    }
                    // Could it pass if every update were a fast-forward? If not, it is
                    // refused before the server sees any of it.
                    let lenient = pushed_refs(
                        &commands,
                        known
                            .iter()
                            .map(|change| change.clone().unwrap_or(RefChange::FastForward)),
                    );
                    let lenient = push_request(&self.line, lenient);
                    if gate.refuses(&lenient) {
                        judge(gate, lenient, &commands).await?;
                    }
                    forward(upstream, buffer).await?;
                    self.stage = if commands.has("push-options") {
                        Stage::Options {
                            commands,
                            buffer: Vec::new(),
                        }
                    } else {
                        pack_stage(commands)?
                    };
                }
                Stage::Options { buffer, .. } => {
                    buffer.extend_from_slice(&data);
                    let Some(len) = command::pkt_section_len(buffer)
                        .map_err(|_| Refused::plain("protocol_error: unreadable push options"))?
                    else {
                        if buffer.len() > command::MAX_COMMAND_LIST {
                            return Err(Refused::plain("protocol_error: push options too long"));
                        }
                        return Ok(());
                    };
                    let Stage::Options {
                        commands,
                        mut buffer,
                    } = std::mem::replace(&mut self.stage, Stage::Passing)
                    else {
                        unreachable!("matched above");
                    };
                    data = buffer.split_off(len);
                    forward(upstream, buffer).await?;
                    self.stage = pack_stage(commands)?;
                }
                Stage::Pack { commands, scanner } => {
                    let passed = scanner.feed(&data).map_err(|error| {
                        Refused::plain(format!("protocol_error: unreadable pack: {error}"))
                    })?;
                    forward(upstream, passed).await?;
                    if !scanner.complete() {
                        return Ok(());
                    }
                    let changes: Vec<RefChange> = commands
                        .updates
                        .iter()
                        .map(|update| {
                            known_change(update).unwrap_or_else(|| {
                                match scanner.fast_forward(&update.old, &update.new) {
                                    Ancestry::FastForward => RefChange::FastForward,
                                    Ancestry::NotProven(why) => RefChange::Force(why),
                                }
                            })
                        })
                        .collect();
                    tracing::debug!(
                        objects = scanner.object_count(),
                        commits = scanner.commit_count(),
                        held = scanner.held_bytes(),
                        "pushed pack read"
                    );
                    let pushed = pushed_refs(commands, changes);
                    judge(gate, push_request(&self.line, pushed), commands).await?;
                    let trailer = scanner.take_trailer();
                    self.stage = Stage::Passing;
                    return forward(upstream, trailer).await;
                }
            }
        }
    }

    /// The agent sent EOF: fine once judged (or before anything was sent).
    pub fn at_eof(&self) -> Result<(), Refused> {
        match &self.stage {
            Stage::Passing => Ok(()),
            Stage::Commands(buffer) if buffer.is_empty() => Ok(()),
            Stage::Commands(_) => Err(Refused::plain("protocol_error: push commands cut short")),
            Stage::Options { .. } | Stage::Pack { .. } => Err(Refused::plain(
                "protocol_error: the push ended before its pack did",
            )),
        }
    }
}

fn pack_stage(commands: PushCommands) -> Result<Stage, Refused> {
    let format = ObjectFormat::from_capabilities(commands.capabilities.iter().map(String::as_str))
        .ok_or_else(|| Refused::plain("protocol_error: unknown object format"))?;
    Ok(Stage::Pack {
        commands,
        scanner: Box::new(PackScanner::new(format)),
    })
}

async fn forward(
    upstream: &russh::ChannelWriteHalf<russh::client::Msg>,
    data: Vec<u8>,
) -> Result<(), Refused> {
    if data.is_empty() {
        return Ok(());
    }
    upstream
        .data_bytes(Bytes::from(data))
        .await
        .map_err(|_| Refused {
            server_gone: true,
            ..Refused::plain("the server closed the channel")
        })
}

/// What the command list alone says about an update: `None` for an update of an
/// existing ref, which needs the pack.
fn known_change(update: &command::RefUpdate) -> Option<RefChange> {
    if update.is_deletion() {
        Some(RefChange::Delete)
    } else if update.is_creation() {
        Some(RefChange::Create)
    } else if update.old == update.new {
        Some(RefChange::FastForward)
    } else {
        None
    }
}

fn known_changes(commands: &PushCommands) -> Vec<Option<RefChange>> {
    commands.updates.iter().map(known_change).collect()
}

fn pushed_refs(
    commands: &PushCommands,
    changes: impl IntoIterator<Item = RefChange>,
) -> Vec<PushedRef> {
    commands
        .updates
        .iter()
        .zip(changes)
        .map(|(update, change)| PushedRef {
            name: update.name.clone(),
            change,
        })
        .collect()
}

/// The push as one request: its class is the most sensitive update's.
fn push_request(line: &str, pushed: Vec<PushedRef>) -> Request {
    let class = if pushed
        .iter()
        .any(|pushed| pushed.change.class() == Operation::Dangerous)
    {
        Operation::Dangerous
    } else {
        Operation::Write
    };
    let summary = pushed
        .iter()
        .map(|pushed| match &pushed.change {
            RefChange::Force(why) => {
                format!("force-push {} (not a fast-forward: {why})", pushed.name)
            }
            change => format!("{} {}", change.verb(), pushed.name),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Request {
        request: "git-push",
        class,
        verb: "git-push".into(),
        command: Some(line.to_owned()),
        summary: format!("git push: {summary}"),
        refused: None,
        pushed,
    }
}

/// Judges and records the push; `Err` with the refusal (and the report for `git`,
/// which says of each ref what it would have been: `force-push (not a fast-forward:
/// ...)`, `delete`...).
async fn judge<G: Gate>(
    gate: &G,
    request: Request,
    commands: &PushCommands,
) -> Result<(), Refused> {
    let changes: Vec<(String, String)> = request
        .pushed
        .iter()
        .map(|pushed| {
            let what = match &pushed.change {
                RefChange::Force(why) => format!("force-push (not a fast-forward: {why})"),
                change => change.verb().to_owned(),
            };
            (pushed.name.clone(), what)
        })
        .collect();
    match judge_and_record(gate, request).await {
        None => Ok(()),
        Some(message) => Err(Refused {
            server_gone: false,
            report: command::refused_push_report(commands, |name| {
                let what = changes
                    .iter()
                    .find(|(changed, _)| changed == name)
                    .map(|(_, what)| what.as_str())
                    .unwrap_or("update");
                format!("sluice: {what}: {message}")
            }),
            message,
        }),
    }
}
