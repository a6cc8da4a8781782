//! What an SSH channel request asks the server to do, as an operation class.
//!
//! sshd runs an `exec` request's string with the user's shell (`$SHELL -c STRING`), so
//! the string is full shell syntax. It is split into words here with POSIX quoting;
//! any shell metacharacter outside quotes (a separator, a redirection, a substitution,
//! a glob, a group) makes the command *compound*: it can run anything, so it is judged
//! as `unparsed` and passes only where a rule allows that. Hand-written because the
//! split must also report where the metacharacters were, which word-splitting crates
//! do not.
//!
//! Known programs get their own class: `git-upload-pack` reads, `git-receive-pack`
//! writes, `scp -f` reads and `scp -t` writes, `rsync --server` reads with `--sender`
//! and writes without, shells and interpreters are `admin` (arbitrary execution), a
//! few destructive programs are `dangerous`, a few inspecting ones `read`, and any
//! other program `write`.

use crate::policy::Operation;

/// An `exec` request, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecCommand {
    /// The command line as the agent sent it (lossy UTF-8).
    pub line: String,
    /// The words after quote removal; for a compound command, what could be split.
    pub words: Vec<String>,
    /// A metacharacter stood outside quotes.
    pub compound: bool,
    pub class: Operation,
    /// What kind of request this is, for records: `exec`, `git-upload-pack`,
    /// `git-receive-pack`, `scp`, `rsync`, `shell`, `compound`.
    pub kind: &'static str,
}

/// Characters that make a command compound when they stand outside quotes.
const METACHARACTERS: &[char] = &[
    ';', '&', '|', '<', '>', '$', '`', '(', ')', '{', '}', '*', '?', '~', '[', '\n', '\r', '#', '!',
];

/// Splits `line` into shell words; `compound` is true when a metacharacter stands
/// outside quotes, a substitution inside double quotes, or the quoting is unbalanced.
pub fn split_words(line: &str) -> (Vec<String>, bool) {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut compound = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                let mut closed = false;
                for inner in chars.by_ref() {
                    if inner == '\'' {
                        closed = true;
                        break;
                    }
                    word.push(inner);
                }
                compound |= !closed;
            }
            '"' => {
                in_word = true;
                let mut closed = false;
                while let Some(inner) = chars.next() {
                    match inner {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next() {
                            Some(escaped @ ('$' | '`' | '"' | '\\')) => word.push(escaped),
                            Some('\n') => {}
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => break,
                        },
                        '$' | '`' => {
                            compound = true;
                            word.push(inner);
                        }
                        _ => word.push(inner),
                    }
                }
                compound |= !closed;
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(escaped) => word.push(escaped),
                    None => compound = true,
                }
            }
            '=' if !in_word || words.is_empty() => {
                // An assignment before the command (`LD_PRELOAD=x cmd`) changes what runs.
                if words.is_empty() {
                    compound = true;
                }
                in_word = true;
                word.push(c);
            }
            c if METACHARACTERS.contains(&c) => {
                // `#` and `~` only mean something at the start of a word, but a
                // stricter reading only costs a rule.
                compound = true;
                in_word = true;
                word.push(c);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    (words, compound)
}

/// Programs that run whatever they are given: an exec of one is a shell.
const INTERPRETERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "fish", "csh", "tcsh", "busybox", "python", "python3",
    "perl", "ruby", "node", "php", "lua", "env", "sudo", "su", "doas", "xargs", "nohup", "exec",
    "eval", "nice", "timeout", "watch", "script", "tmux", "screen", "awk", "find",
];
/// Programs that destroy data or stop the machine.
const DESTRUCTIVE: &[&str] = &[
    "rm", "rmdir", "shred", "dd", "mkfs", "wipefs", "truncate", "reboot", "shutdown", "halt",
    "poweroff", "kill", "killall", "pkill", "fdisk", "parted",
];
/// Programs that only look.
const INSPECTING: &[&str] = &[
    "cat",
    "ls",
    "head",
    "tail",
    "stat",
    "id",
    "whoami",
    "uname",
    "hostname",
    "pwd",
    "df",
    "du",
    "uptime",
    "date",
    "echo",
    "true",
    "false",
    "wc",
    "md5sum",
    "sha256sum",
    "file",
    "test",
];

/// Classifies an `exec` request.
pub fn classify_exec(raw: &[u8]) -> ExecCommand {
    let line = String::from_utf8_lossy(raw).into_owned();
    let (words, compound) = split_words(&line);
    let (class, kind) = if compound || raw.contains(&0) {
        (Operation::Unparsed, "compound")
    } else {
        classify_words(&words)
    };
    ExecCommand {
        line,
        words,
        compound: compound || raw.contains(&0),
        class,
        kind,
    }
}

fn classify_words(words: &[String]) -> (Operation, &'static str) {
    let Some(first) = words.first() else {
        // An empty exec runs the login shell.
        return (Operation::Admin, "shell");
    };
    let program = first.rsplit('/').next().unwrap_or(first);
    let args = &words[1..];
    let has = |flag: &str| args.iter().any(|arg| arg == flag);
    match program {
        "git-upload-pack" | "git-upload-archive" => (Operation::Read, "git-upload-pack"),
        "git-receive-pack" => (Operation::Write, "git-receive-pack"),
        "git" => match args.first().map(String::as_str) {
            Some("upload-pack" | "upload-archive") => (Operation::Read, "git-upload-pack"),
            Some("receive-pack") => (Operation::Write, "git-receive-pack"),
            _ => (Operation::Write, "exec"),
        },
        "scp" => {
            // Legacy scp: the remote side runs `scp -t` to receive (a write) or `scp -f`
            // to send (a read). Flags may be grouped (`-pt`).
            let flags: String = args
                .iter()
                .take_while(|arg| arg.starts_with('-') && *arg != "--")
                .flat_map(|arg| arg.chars().skip(1))
                .collect();
            if flags.contains('t') {
                (Operation::Write, "scp")
            } else if flags.contains('f') {
                (Operation::Read, "scp")
            } else {
                (Operation::Unparsed, "scp")
            }
        }
        "rsync" if has("--server") => {
            if has("--sender") {
                (Operation::Read, "rsync")
            } else {
                (Operation::Write, "rsync")
            }
        }
        "rsync" => (Operation::Unparsed, "rsync"),
        program if INTERPRETERS.contains(&program) => (Operation::Admin, "shell"),
        program if DESTRUCTIVE.contains(&program) || program.starts_with("mkfs.") => {
            (Operation::Dangerous, "exec")
        }
        program if INSPECTING.contains(&program) => (Operation::Read, "exec"),
        _ => (Operation::Write, "exec"),
    }
}

pub use crate::policy::command_glob_matches as glob_matches;

/// One ref update a `git push` announces before its pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

impl RefUpdate {
    pub fn is_deletion(&self) -> bool {
        self.new.bytes().all(|b| b == b'0')
    }

    pub fn is_creation(&self) -> bool {
        self.old.bytes().all(|b| b == b'0')
    }
}

/// What one ref update of a push does, once judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefChange {
    Create,
    /// An update the pushed pack proves to be a fast-forward.
    FastForward,
    /// An update not proven a fast-forward (a force-push, or unprovable): why.
    Force(String),
    Delete,
}

impl RefChange {
    /// A force-push or a deletion loses history: `dangerous`; anything else `write`.
    pub fn class(&self) -> Operation {
        match self {
            Self::Create | Self::FastForward => Operation::Write,
            Self::Force(_) | Self::Delete => Operation::Dangerous,
        }
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::FastForward => "update",
            Self::Force(_) => "force-push",
            Self::Delete => "delete",
        }
    }
}

/// A ref a push changes, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedRef {
    pub name: String,
    pub change: RefChange,
}

/// The command list at the start of a push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushCommands {
    pub updates: Vec<RefUpdate>,
    /// The capabilities the client asked for on its first command line.
    pub capabilities: Vec<String>,
    /// Bytes the list takes, up to and including its flush packet.
    pub len: usize,
}

impl PushCommands {
    pub fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// Errors reading a push's command list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PktLineError {
    #[error("bad pkt-line length")]
    Length,
    #[error("bad ref update line")]
    Update,
}

/// The longest command list read before the pack: a push of thousands of refs fits.
pub const MAX_COMMAND_LIST: usize = 4 * 1024 * 1024;

/// Reads the ref updates at the start of what a `git push` sends to
/// `git-receive-pack` (pkt-lines up to the first flush packet). `Ok(None)`: more bytes
/// are needed.
pub fn parse_ref_updates(buffer: &[u8]) -> Result<Option<PushCommands>, PktLineError> {
    let mut updates = Vec::new();
    let mut capabilities = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = buffer.get(at..at + 4) else {
            return Ok(None);
        };
        let length = std::str::from_utf8(header)
            .ok()
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .ok_or(PktLineError::Length)?;
        if length == 0 {
            return Ok(Some(PushCommands {
                updates,
                capabilities,
                len: at + 4,
            }));
        }
        if length < 4 {
            return Err(PktLineError::Length);
        }
        let Some(payload) = buffer.get(at + 4..at + length) else {
            return Ok(None);
        };
        // The first command line carries the capabilities after a NUL.
        let mut parts = payload.splitn(2, |&b| b == 0);
        let line = parts.next().unwrap_or_default();
        if updates.is_empty()
            && let Some(listed) = parts.next()
        {
            capabilities = String::from_utf8_lossy(listed)
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect();
        }
        let line = std::str::from_utf8(line).map_err(|_| PktLineError::Update)?;
        let line = line.trim_end_matches('\n');
        if line.starts_with("shallow ") {
            at += length;
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(PktLineError::Update);
        };
        let is_id = |id: &str| {
            (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if !is_id(old) || !is_id(new) {
            return Err(PktLineError::Update);
        }
        updates.push(RefUpdate {
            old: old.to_owned(),
            new: new.to_owned(),
            name: name.to_owned(),
        });
        at += length;
    }
}

/// The length of the pkt-lines at the start of `buffer` up to and including a flush
/// packet (a push's options). `Ok(None)`: more bytes are needed.
pub fn pkt_section_len(buffer: &[u8]) -> Result<Option<usize>, PktLineError> {
    let mut at = 0;
    loop {
        let Some(header) = buffer.get(at..at + 4) else {
            return Ok(None);
        };
        let length = std::str::from_utf8(header)
            .ok()
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .ok_or(PktLineError::Length)?;
        match length {
            0 => return Ok(Some(at + 4)),
            1..=3 => return Err(PktLineError::Length),
            _ => at += length,
        }
    }
}

fn pkt_line(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.extend_from_slice(payload);
}

/// What `git-receive-pack` would answer when every update of a push is refused:
/// report-status (`unpack ok`, then `ng REF REASON` per ref, a flush), inside side-band
/// packets on band 1 when the client asked for side-band. `reason` gives each ref's
/// reason. `None`: the client asked for no report (it then reads only the stderr
/// message and exit status).
pub fn refused_push_report(
    commands: &PushCommands,
    reason: impl Fn(&str) -> String,
) -> Option<Vec<u8>> {
    if !commands.has("report-status") && !commands.has("report-status-v2") {
        return None;
    }
    let mut report = Vec::new();
    pkt_line(b"unpack ok\n", &mut report);
    for update in &commands.updates {
        let mut reason: String = reason(&update.name)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(400)
            .collect();
        if reason.is_empty() {
            reason.push_str("refused by sluice");
        }
        pkt_line(
            format!("ng {} {reason}\n", update.name).as_bytes(),
            &mut report,
        );
    }
    report.extend_from_slice(b"0000");
    let band_max = if commands.has("side-band-64k") {
        65520
    } else if commands.has("side-band") {
        1000
    } else {
        return Some(report);
    };
    let mut wrapped = Vec::new();
    for chunk in report.chunks(band_max - 5) {
        let mut payload = Vec::with_capacity(chunk.len() + 1);
        payload.push(1);
        payload.extend_from_slice(chunk);
        pkt_line(&payload, &mut wrapped);
    }
    wrapped.extend_from_slice(b"0000");
    Some(wrapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(line: &str) -> (Operation, &'static str) {
        let command = classify_exec(line.as_bytes());
        (command.class, command.kind)
    }

    #[test]
    fn words_follow_shell_quoting() {
        assert_eq!(
            split_words(r#"git-receive-pack '/srv/app.git'"#),
            (
                vec!["git-receive-pack".into(), "/srv/app.git".into()],
                false
            )
        );
        assert_eq!(
            split_words(r#"echo "a b" c\ d 'e;f'"#),
            (
                vec!["echo".into(), "a b".into(), "c d".into(), "e;f".into()],
                false
            )
        );
    }

    #[test]
    fn metacharacters_outside_quotes_make_a_command_compound() {
        for line in [
            "ls; rm -rf /",
            "ls && rm -rf /",
            "cat x | sh",
            "echo $(id)",
            "echo `id`",
            "echo \"$(id)\"",
            "cat < /etc/shadow",
            "ls > x",
            "rm *",
            "LD_PRELOAD=/tmp/x.so ls",
            "ls\nrm -rf /",
            "echo 'unterminated",
            "{ ls; }",
        ] {
            let command = classify_exec(line.as_bytes());
            assert!(command.compound, "{line:?}");
            assert_eq!(command.class, Operation::Unparsed, "{line:?}");
        }
        assert!(!classify_exec(b"echo 'a;b' \"c|d\"").compound);
    }

    #[test]
    fn known_programs_get_their_class() {
        assert_eq!(
            class("git-upload-pack '/srv/a.git'"),
            (Operation::Read, "git-upload-pack")
        );
        assert_eq!(
            class("git-receive-pack '/srv/a.git'"),
            (Operation::Write, "git-receive-pack")
        );
        assert_eq!(class("scp -t /tmp/x"), (Operation::Write, "scp"));
        assert_eq!(class("scp -pf /tmp/x"), (Operation::Read, "scp"));
        assert_eq!(
            class("rsync --server -vlogDtpre.iLsfxCIvu . /dst"),
            (Operation::Write, "rsync")
        );
        assert_eq!(
            class("rsync --server --sender -vlogDtpre.iLsfxCIvu . /src"),
            (Operation::Read, "rsync")
        );
        assert_eq!(class("bash -s"), (Operation::Admin, "shell"));
        assert_eq!(class("/usr/bin/python3 -"), (Operation::Admin, "shell"));
        assert_eq!(class(""), (Operation::Admin, "shell"));
        assert_eq!(class("rm -rf /srv/app"), (Operation::Dangerous, "exec"));
        assert_eq!(class("cat /etc/hostname"), (Operation::Read, "exec"));
        assert_eq!(class("systemctl restart app"), (Operation::Write, "exec"));
    }

    #[test]
    fn globs_never_match_across_separators() {
        assert!(glob_matches("systemctl status *", "systemctl status app"));
        assert!(glob_matches(
            "systemctl restart app",
            "systemctl restart app"
        ));
        assert!(!glob_matches(
            "systemctl restart app",
            "systemctl restart app2"
        ));
        assert!(!glob_matches(
            "systemctl status *",
            "systemctl status x; rm -rf /"
        ));
        assert!(!glob_matches(
            "systemctl status *",
            "systemctl status $(id)"
        ));
        assert!(glob_matches(
            "git-receive-pack '/srv/*.git'",
            "git-receive-pack '/srv/app.git'"
        ));
        assert!(glob_matches("*", "anything at all"));
        assert!(!glob_matches("ls ?", "ls ;"));
    }

    fn pkt(line: &str) -> String {
        format!("{:04x}{line}", line.len() + 4)
    }

    #[test]
    fn ref_updates_are_read_up_to_the_flush() {
        let zero = "0".repeat(40);
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let text = format!(
            "{}{}0000PACK...",
            pkt(&format!(
                "{a} {b} refs/heads/main\0report-status side-band-64k\n"
            )),
            pkt(&format!("{a} {zero} refs/heads/old\n")),
        );
        let commands = parse_ref_updates(text.as_bytes()).unwrap().unwrap();
        assert_eq!(&text[commands.len..], "PACK...");
        assert!(commands.has("report-status") && commands.has("side-band-64k"));
        let updates = commands.updates;
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0].name, "refs/heads/main");
        assert!(!updates[0].is_deletion());
        assert!(updates[1].is_deletion());
        assert_eq!(parse_ref_updates(&text.as_bytes()[..30]), Ok(None));
        assert_eq!(parse_ref_updates(b"zzzz"), Err(PktLineError::Length));
        let commands = parse_ref_updates(text.as_bytes()).unwrap().unwrap();
        let report = refused_push_report(&commands, |_| "no\nway".into()).unwrap();
        let inner = format!(
            "{}{}{}0000",
            pkt("unpack ok\n"),
            pkt("ng refs/heads/main no way\n"),
            pkt("ng refs/heads/old no way\n")
        );
        assert_eq!(
            report,
            format!("{}0000", pkt(&format!("\u{1}{inner}"))).into_bytes()
        );
        assert_eq!(
            pkt_section_len(format!("{}0000PACK", pkt("option")).as_bytes()),
            Ok(Some(14))
        );
        assert_eq!(pkt_section_len(b"000"), Ok(None));
        assert_eq!(
            parse_ref_updates(pkt("not an update\n").as_bytes()),
            Err(PktLineError::Update)
        );
    }
}
