//! SFTP inside an SSH channel: each file request the agent sends is judged on its own,
//! and a refused one is answered by sluice with a permission-denied status while the
//! session goes on.
//!
//! The requests themselves are decoded by `russh-sftp` (its `protocol::Packet` reads a
//! packet body in either direction, requests and responses alike, without a session).
//! What it does not do is what a proxy needs around that: cut the channel's byte stream
//! into whole packets, both ways, so that a status of ours can be slipped in between
//! two of the server's packets, never into one. That framing (a 4-byte length) is
//! hand-written here, as is the reading of the OpenSSH extensions' paths, which
//! `russh-sftp` leaves as opaque bytes.
//!
//! Classes: looking (stat, realpath, readlink, opendir, opening a file to read) is
//! `read`; creating or changing (opening to write, append, create or truncate, mkdir,
//! setstat, symlink, hard links, copy-data) is `write`; removing and renaming (remove,
//! rmdir, rename, posix-rename) is `dangerous`. Reads and writes through a handle
//! (read, write, readdir, close, fstat, fsync) were decided when the handle was opened:
//! the server enforces the handle's mode. A packet that cannot be decoded (an unknown
//! type, a path that is not UTF-8) is `unparsed`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{OpenFlags, Packet, StatusCode};

use crate::policy::Operation;

/// The largest packet either side may send. OpenSSH's sftp-server takes 256 KiB;
/// beyond this the stream is not SFTP as anyone speaks it.
pub const MAX_PACKET: usize = 1024 * 1024;

const SSH_FXP_INIT: u8 = 1;
const SSH_FXP_CLOSE: u8 = 4;
const SSH_FXP_READ: u8 = 5;
const SSH_FXP_WRITE: u8 = 6;
const SSH_FXP_FSTAT: u8 = 8;
const SSH_FXP_READDIR: u8 = 12;

#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    #[error("protocol_error: an SFTP packet of {0} bytes (at most {MAX_PACKET})")]
    TooLarge(usize),
}

/// Cuts a byte stream into whole SFTP packets (length prefix included).
#[derive(Default)]
pub struct Framer {
    buffer: BytesMut,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next whole packet, if one has arrived.
    pub fn next_packet(&mut self) -> Result<Option<Bytes>, SftpError> {
        let Some(header) = self.buffer.get(..4) else {
            return Ok(None);
        };
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if length > MAX_PACKET {
            return Err(SftpError::TooLarge(length));
        }
        if self.buffer.len() < 4 + length {
            return Ok(None);
        }
        Ok(Some(self.buffer.split_to(4 + length).freeze()))
    }

    /// No partial packet is buffered: a packet of sluice's may be sent now.
    pub fn at_boundary(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Whatever is buffered (a stream that ended mid-packet).
    pub fn take_rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buffer).freeze()
    }
}

/// What to do with one packet from the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum Judged {
    /// Forwarded unjudged: the version handshake and handle operations.
    Pass,
    /// Judged as `class`; refused, it is answered with a status for `id`.
    Request {
        id: u32,
        class: Operation,
        /// `open`, `remove`, `posix-rename@openssh.com`...
        verb: String,
        /// What the record shows: `open /srv/a.txt (write, create, truncate)`.
        summary: String,
    },
}

/// Classifies one whole packet from the agent (length prefix included).
pub fn classify(packet: &Bytes) -> Judged {
    let Some(&kind) = packet.get(4) else {
        return unparsed(0, "empty packet".into());
    };
    let id = packet
        .get(5..9)
        .map(|id| u32::from_be_bytes([id[0], id[1], id[2], id[3]]))
        .unwrap_or(0);
    match kind {
        SSH_FXP_INIT => return Judged::Pass,
        SSH_FXP_CLOSE | SSH_FXP_READ | SSH_FXP_WRITE | SSH_FXP_FSTAT | SSH_FXP_READDIR => {
            return Judged::Pass;
        }
        _ => {}
    }
    let mut body = packet.slice(4..);
    let decoded = match Packet::try_from(&mut body) {
        Ok(decoded) => decoded,
        Err(error) => return unparsed(id, format!("type {kind}: {error}")),
    };
    let request = |class: Operation, verb: &str, what: String| Judged::Request {
        id,
        class,
        verb: verb.to_owned(),
        summary: format!("{verb} {what}"),
    };
    match decoded {
        Packet::Open(open) => {
            let changes = OpenFlags::WRITE
                | OpenFlags::APPEND
                | OpenFlags::CREATE
                | OpenFlags::TRUNCATE
                | OpenFlags::EXCLUDE;
            let flags: Vec<&str> = [
                (OpenFlags::READ, "read"),
                (OpenFlags::WRITE, "write"),
                (OpenFlags::APPEND, "append"),
                (OpenFlags::CREATE, "create"),
                (OpenFlags::TRUNCATE, "truncate"),
                (OpenFlags::EXCLUDE, "exclusive"),
            ]
            .into_iter()
            .filter(|(flag, _)| open.pflags.contains(*flag))
            .map(|(_, name)| name)
            .collect();
            let class = if open.pflags.intersects(changes) {
                Operation::Write
            } else {
                Operation::Read
            };
            request(
                class,
                "open",
                format!("{} ({})", open.filename, flags.join(", ")),
            )
        }
        Packet::OpenDir(open) => request(Operation::Read, "opendir", open.path),
        Packet::Stat(stat) => request(Operation::Read, "stat", stat.path),
        Packet::Lstat(stat) => request(Operation::Read, "lstat", stat.path),
        Packet::RealPath(path) => request(Operation::Read, "realpath", path.path),
        Packet::ReadLink(link) => request(Operation::Read, "readlink", link.path),
        Packet::SetStat(set) => request(Operation::Write, "setstat", set.path),
        Packet::FSetStat(_) => request(Operation::Write, "fsetstat", "a handle".into()),
        Packet::MkDir(dir) => request(Operation::Write, "mkdir", dir.path),
        Packet::Symlink(link) => request(
            Operation::Write,
            "symlink",
            format!("{} -> {}", link.linkpath, link.targetpath),
        ),
        Packet::Remove(remove) => request(Operation::Dangerous, "remove", remove.filename),
        Packet::RmDir(dir) => request(Operation::Dangerous, "rmdir", dir.path),
        Packet::Rename(rename) => request(
            Operation::Dangerous,
            "rename",
            format!("{} -> {}", rename.oldpath, rename.newpath),
        ),
        Packet::Extended(extended) => classify_extended(id, &extended.request, &extended.data),
        // Responses and anything else an agent has no business sending.
        other => unparsed(id, format!("{other:?}").chars().take(80).collect()),
    }
}

/// The OpenSSH extensions (PROTOCOL in OpenSSH's sources) by what they do.
fn classify_extended(id: u32, name: &str, data: &[u8]) -> Judged {
    let mut data = data;
    let mut path = || read_string(&mut data).unwrap_or_else(|| "?".into());
    let (class, summary) = match name {
        "posix-rename@openssh.com" => {
            let from = path();
            (Operation::Dangerous, format!("{from} -> {}", path()))
        }
        "hardlink@openssh.com" => {
            let from = path();
            (Operation::Write, format!("{from} -> {}", path()))
        }
        "lsetstat@openssh.com" => (Operation::Write, path()),
        // Copies between two open handles: the target's handle may have been opened
        // for reading only if the server allows; judge it as the write it is.
        "copy-data" => (Operation::Write, "between handles".into()),
        "statvfs@openssh.com" | "expand-path@openssh.com" | "home-directory" => {
            (Operation::Read, path())
        }
        "fstatvfs@openssh.com" | "fsync@openssh.com" => return Judged::Pass,
        "limits@openssh.com" | "users-groups-by-id@openssh.com" => (Operation::Read, String::new()),
        _ => return unparsed(id, format!("extension {name}")),
    };
    Judged::Request {
        id,
        class,
        verb: name.to_owned(),
        summary: format!("{name} {summary}").trim_end().to_owned(),
    }
}

fn unparsed(id: u32, what: String) -> Judged {
    Judged::Request {
        id,
        class: Operation::Unparsed,
        verb: "unparsed".into(),
        summary: format!("undecoded SFTP packet: {what}"),
    }
}

/// An SSH string (u32 length, bytes) as UTF-8, lossily.
fn read_string(data: &mut &[u8]) -> Option<String> {
    if data.remaining() < 4 {
        return None;
    }
    let length = data.get_u32() as usize;
    let bytes = data.get(..length)?;
    let text = String::from_utf8_lossy(bytes).into_owned();
    data.advance(length);
    Some(text)
}

/// The `SSH_FXP_STATUS` packet answering request `id` with permission denied.
pub fn permission_denied(id: u32, message: &str) -> Bytes {
    status(id, StatusCode::PermissionDenied, message)
}

fn status(id: u32, code: StatusCode, message: &str) -> Bytes {
    // Written out rather than through russh-sftp's serializer: five fields, and no
    // error path for what must always be sendable.
    let mut packet = BytesMut::with_capacity(4 + 1 + 4 + 4 + 4 + message.len() + 4 + 2);
    let length = 1 + 4 + 4 + 4 + message.len() + 4 + 2;
    packet.put_u32(length as u32);
    packet.put_u8(101);
    packet.put_u32(id);
    packet.put_u32(code as u32);
    packet.put_u32(message.len() as u32);
    packet.put_slice(message.as_bytes());
    packet.put_u32(2);
    packet.put_slice(b"en");
    packet.freeze()
}

#[cfg(test)]
mod tests {
    use russh_sftp::protocol::{FileAttributes, Open, Remove, Rename, Status};

    use super::*;

    fn encoded(packet: Packet) -> Bytes {
        Bytes::try_from(packet).expect("encode")
    }

    #[test]
    fn packets_are_cut_whole_whatever_the_chunks() {
        let one = encoded(Packet::Remove(Remove {
            id: 7,
            filename: "/tmp/a".into(),
        }));
        let two = encoded(Packet::Rename(Rename {
            id: 8,
            oldpath: "/a".into(),
            newpath: "/b".into(),
        }));
        let stream: Vec<u8> = [one.clone(), two.clone()].concat();
        for split in 0..stream.len() {
            let mut framer = Framer::default();
            let mut packets = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                framer.push(chunk);
                while let Some(packet) = framer.next_packet().unwrap() {
                    packets.push(packet);
                }
            }
            assert_eq!(packets, vec![one.clone(), two.clone()], "split at {split}");
            assert!(framer.at_boundary());
        }
        let mut framer = Framer::default();
        framer.push(&u32::MAX.to_be_bytes());
        assert!(framer.next_packet().is_err());
    }

    #[test]
    fn requests_get_their_classes() {
        let open = |flags: OpenFlags| {
            classify(&encoded(Packet::Open(Open {
                id: 1,
                filename: "/srv/a".into(),
                pflags: flags,
                attrs: FileAttributes::default(),
            })))
        };
        let class = |judged: Judged| match judged {
            Judged::Request { class, .. } => class,
            Judged::Pass => panic!("passed"),
        };
        assert_eq!(class(open(OpenFlags::READ)), Operation::Read);
        assert_eq!(
            class(open(
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE
            )),
            Operation::Write
        );
        let remove = classify(&encoded(Packet::Remove(Remove {
            id: 9,
            filename: "/srv/a".into(),
        })));
        assert_eq!(
            remove,
            Judged::Request {
                id: 9,
                class: Operation::Dangerous,
                verb: "remove".into(),
                summary: "remove /srv/a".into()
            }
        );
        let mut data = Vec::new();
        for path in ["/a", "/b"] {
            data.extend_from_slice(&(path.len() as u32).to_be_bytes());
            data.extend_from_slice(path.as_bytes());
        }
        let rename = classify(&encoded(Packet::Extended(russh_sftp::protocol::Extended {
            id: 3,
            request: "posix-rename@openssh.com".into(),
            data,
        })));
        assert!(
            matches!(&rename, Judged::Request { class: Operation::Dangerous, summary, .. }
                if summary == "posix-rename@openssh.com /a -> /b"),
            "{rename:?}"
        );
        // A response from the agent, garbage, an unknown extension: unparsed.
        let bogus = classify(&encoded(Packet::Status(Status {
            id: 4,
            status_code: StatusCode::Ok,
            error_message: String::new(),
            language_tag: String::new(),
        })));
        assert_eq!(class(bogus), Operation::Unparsed);
        assert_eq!(
            class(classify(&Bytes::from_static(&[
                0, 0, 0, 5, 250, 0, 0, 0, 1
            ]))),
            Operation::Unparsed
        );
        // Handle operations pass: their open was judged.
        assert_eq!(
            classify(&Bytes::from_static(&[
                0, 0, 0, 9, 5, 0, 0, 0, 1, 0, 0, 0, 0
            ])),
            Judged::Pass
        );
    }

    #[test]
    fn a_denial_is_a_status_the_client_reads() {
        let mut packet = permission_denied(42, "denied by sluice");
        packet.advance(4);
        match Packet::try_from(&mut packet).expect("decodes") {
            Packet::Status(status) => {
                assert_eq!(status.id, 42);
                assert_eq!(status.status_code, StatusCode::PermissionDenied);
                assert_eq!(status.error_message, "denied by sluice");
            }
            other => panic!("{other:?}"),
        }
    }
}
