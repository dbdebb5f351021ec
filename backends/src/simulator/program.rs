//! The simulated processes: a small, shell-less command runner with deterministic output.
//!
//! A process is its command line (`Entrypoint` then `Cmd`, or an exec's `Cmd`); the first
//! word's file name picks the program:
//!
//! | program | does |
//! |---|---|
//! | (no command) | runs until stopped |
//! | `echo [-n] ARGS` | prints ARGS joined by spaces and a newline (none with `-n`), exits 0 |
//! | `cat [-]` | copies stdin to stdout until EOF, exits 0 |
//! | `true`, `false` | exit 0, 1 |
//! | `sleep N` | waits N seconds (real time; `s`, `m`, `h`, `d` suffixes, `infinity`), exits 0 |
//! | `sh`, `ash`, `bash` | `-c SCRIPT` runs SCRIPT; with no arguments runs each line of stdin |
//!
//! A script is commands separated by `;`, newlines, `&&` and `||`, with `'`/`"` quoting and
//! `\` escapes, `$?`, `#` comments, the redirections `>&2`, `1>&2`, `2>&1`, `>/dev/null`,
//! `2>/dev/null`, and the builtins `exit [N]` and `:`, besides the programs above (and `sh`,
//! nested at most [`MAX_SHELL_DEPTH`] deep). A command it does not know prints
//! `sh: NAME: not found` and has status 127, as busybox's shell does.
//!
//! Any other program does not exist: [`check`] gives dockerd's start error for it.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::log::Live;

/// Stream number of stdout in Docker's multiplexed framing.
pub(super) const STDOUT: u8 = 1;
/// Stream number of stderr.
pub(super) const STDERR: u8 = 2;

/// Whether `argv` names a program that exists; else dockerd's error for starting it, with
/// `prefix` (`failed to create shim task: OCI runtime create failed` for a container,
/// `OCI runtime exec failed` for an exec).
pub(super) fn check(argv: &[String], prefix: &str) -> Result<(), String> {
    let Some(path) = argv.first() else { return Ok(()) };
    if is_known(file_name(path)) && !path.is_empty() {
        return Ok(());
    }
    let reason = if path.contains('/') {
        format!("stat {path}: no such file or directory")
    } else {
        "executable file not found in $PATH".to_owned()
    };
    let start = if prefix.contains("exec") { "exec failed" } else { "runc create failed" };
    Err(format!(
        "{prefix}: {start}: unable to start container process: exec: \"{path}\": {reason}: unknown"
    ))
}

/// Runs `argv` on `io`; returns its exit code. Waits while the container is paused, also
/// before it exits.
///
/// # Cancel safety
/// Dropping the future kills the process: output already written stays written.
pub(super) async fn run(argv: &[String], io: &mut Io) -> i32 {
    let code = match argv.split_first() {
        None => std::future::pending().await,
        Some((path, args)) => program(path, args, io, FDS, 0).await,
    };
    io.resume().await;
    code
}

/// What a process is connected to.
pub(super) struct Io {
    pub stdin: Stdin,
    pub out: Output,
    /// Under a TTY, output is raw, stderr goes with stdout and lines end in `\r\n`.
    pub tty: bool,
    /// The container's pause state: output waits while it is `true`.
    pub paused: watch::Receiver<bool>,
}

/// Where a process's output goes.
pub(super) enum Output {
    /// Into the container's log (which attach streams follow).
    Log(std::sync::Arc<Live>),
    /// Onto an exec's stream: framed, or raw under a TTY. Dropped after a write error (the
    /// reader went away), as a process's writes would then fail.
    Stream(Box<dyn AsyncWrite + Send + Unpin>),
    /// Nowhere (a detached exec).
    Discard,
}

impl Io {
    /// Writes `data` on `stream` (after waiting while paused).
    pub(super) async fn write(&mut self, stream: u8, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.resume().await;
        let (stream, data) = if self.tty { (STDOUT, crlf(data)) } else { (stream, data.to_vec()) };
        match &mut self.out {
            Output::Log(live) => {
                live.append(stream, &data);
                live.caught_up().await;
            }
            Output::Stream(writer) => {
                let bytes = if self.tty { Bytes::from(data) } else { frames(stream, &data) };
                if writer.write_all(&bytes).await.is_err() {
                    self.out = Output::Discard;
                }
            }
            Output::Discard => {}
        }
    }

    /// Waits while the container is paused.
    async fn resume(&mut self) {
        // An error means the container is gone: nothing to wait for.
        let _ = self.paused.wait_for(|paused| !paused).await;
    }
}

/// A process's stdin: chunks from a bounded channel; the channel's end is EOF.
pub(super) struct Stdin {
    chunks: Option<mpsc::Receiver<Bytes>>,
    pending: BytesMut,
}

impl Stdin {
    /// Stdin fed by `chunks`.
    pub(super) fn new(chunks: mpsc::Receiver<Bytes>) -> Self {
        Self { chunks: Some(chunks), pending: BytesMut::new() }
    }

    /// Stdin that is at EOF (`/dev/null`).
    pub(super) fn closed() -> Self {
        Self { chunks: None, pending: BytesMut::new() }
    }

    /// The next bytes, or `None` at EOF.
    async fn chunk(&mut self) -> Option<Bytes> {
        if !self.pending.is_empty() {
            return Some(self.pending.split().freeze());
        }
        let chunk = self.chunks.as_mut()?.recv().await;
        if chunk.is_none() {
            self.chunks = None;
        }
        chunk
    }

    /// The next line with its newline, at most `MAX_LINE` bytes (a longer one comes in
    /// pieces); the rest before EOF; `None` at EOF.
    async fn line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                return Some(self.pending.split_to(end + 1).freeze());
            }
            if self.pending.len() >= MAX_LINE {
                return Some(self.pending.split_to(MAX_LINE).freeze());
            }
            let chunk = match self.chunks.as_mut() {
                Some(chunks) => chunks.recv().await,
                None => None,
            };
            match chunk {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => {
                    self.chunks = None;
                    return (!self.pending.is_empty()).then(|| self.pending.split().freeze());
                }
            }
        }
    }
}

/// Docker's multiplexed frames for `data` on `stream`: 8-byte headers, payloads of at most
/// `MAX_FRAME` bytes.
pub(super) fn frames(stream: u8, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    for piece in data.chunks(MAX_FRAME) {
        out.put_u8(stream);
        out.put_slice(&[0, 0, 0]);
        // Invariant: a piece is at most MAX_FRAME bytes, far below u32::MAX.
        out.put_u32(u32::try_from(piece.len()).unwrap_or(u32::MAX));
        out.put_slice(piece);
    }
    out.freeze()
}

/// Where a command's stdout and stderr go: a stream number, or nowhere (`/dev/null`).
#[derive(Clone, Copy)]
struct Fds {
    out: Option<u8>,
    err: Option<u8>,
}

const FDS: Fds = Fds { out: Some(STDOUT), err: Some(STDERR) };

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_known(name: &str) -> bool {
    matches!(name, "echo" | "cat" | "true" | "false" | "sleep" | "sh" | "ash" | "bash")
}

async fn emit(io: &mut Io, fd: Option<u8>, data: &[u8]) {
    if let Some(stream) = fd {
        io.write(stream, data).await;
    }
}

fn program<'a>(
    path: &'a str,
    args: &'a [String],
    io: &'a mut Io,
    fds: Fds,
    depth: usize,
) -> BoxFuture<'a, i32> {
    Box::pin(async move {
        match file_name(path) {
            "echo" => {
                let (newline, words) = match args.split_first() {
                    Some((flag, rest)) if flag == "-n" => (false, rest),
                    _ => (true, args),
                };
                let mut text = words.join(" ");
                if newline {
                    text.push('\n');
                }
                emit(io, fds.out, text.as_bytes()).await;
                0
            }
            "cat" => cat(args, io, fds).await,
            "true" => 0,
            "false" => 1,
            "sleep" => sleep(args, io, fds).await,
            "sh" | "ash" | "bash" if depth < MAX_SHELL_DEPTH => shell(args, io, fds, depth).await,
            "sh" | "ash" | "bash" => {
                emit(io, fds.err, b"sh: too many nested shells\n").await;
                2
            }
            other => {
                let text = format!("sh: {other}: not found\n");
                emit(io, fds.err, text.as_bytes()).await;
                127
            }
        }
    })
}

async fn cat(args: &[String], io: &mut Io, fds: Fds) -> i32 {
    let mut code = 0;
    let files: Vec<&String> = args.iter().collect();
    let inputs: Vec<&str> =
        if files.is_empty() { vec!["-"] } else { files.iter().map(|f| f.as_str()).collect() };
    for input in inputs {
        if input == "-" {
            while let Some(chunk) = io.stdin.chunk().await {
                emit(io, fds.out, &chunk).await;
            }
        } else {
            let text = format!("cat: can't open '{input}': No such file or directory\n");
            emit(io, fds.err, text.as_bytes()).await;
            code = 1;
        }
    }
    code
}

async fn sleep(args: &[String], io: &mut Io, fds: Fds) -> i32 {
    if args.is_empty() {
        emit(io, fds.err, b"sleep: missing operand\n").await;
        return 1;
    }
    let mut total = 0.0;
    for arg in args {
        match seconds(arg) {
            Some(seconds) => total += seconds,
            None => {
                let text = format!("sleep: invalid number '{arg}'\n");
                emit(io, fds.err, text.as_bytes()).await;
                return 1;
            }
        }
    }
    match Duration::try_from_secs_f64(total).ok().filter(|d| *d <= MAX_SLEEP) {
        Some(duration) => tokio::time::sleep(duration).await,
        // Longer than any test or session: as good as forever, until stopped.
        None => std::future::pending().await,
    }
    0
}

fn seconds(arg: &str) -> Option<f64> {
    if matches!(arg, "inf" | "infinity") {
        return Some(f64::INFINITY);
    }
    let (number, unit) = match arg.char_indices().last() {
        Some((at, unit @ ('s' | 'm' | 'h' | 'd'))) => (&arg[..at], unit),
        _ => (arg, 's'),
    };
    let value: f64 = number.parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0)?;
    let scale = match unit {
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86400.0,
        _ => 1.0,
    };
    Some(value * scale)
}

async fn shell(args: &[String], io: &mut Io, fds: Fds, depth: usize) -> i32 {
    match args.first().map(String::as_str) {
        Some("-c") => match args.get(1) {
            Some(script) => script_status(script, io, fds, depth).await,
            None => {
                emit(io, fds.err, b"sh: -c requires an argument\n").await;
                2
            }
        },
        Some(file) => {
            let text = format!("sh: can't open '{file}': No such file or directory\n");
            emit(io, fds.err, text.as_bytes()).await;
            2
        }
        None => {
            // Commands from stdin, one line at a time, as they come.
            let mut status = 0;
            while let Some(line) = io.stdin.line().await {
                let line = String::from_utf8_lossy(&line).into_owned();
                match script(&line, io, fds, depth, status).await {
                    Flow::Next(code) => status = code,
                    Flow::Exit(code) => return code,
                }
            }
            status
        }
    }
}

async fn script_status(text: &str, io: &mut Io, fds: Fds, depth: usize) -> i32 {
    match script(text, io, fds, depth, 0).await {
        Flow::Next(code) | Flow::Exit(code) => code,
    }
}

/// How a script ended: on its last command's status, or at `exit`.
enum Flow {
    Next(i32),
    Exit(i32),
}

async fn script(text: &str, io: &mut Io, fds: Fds, depth: usize, mut status: i32) -> Flow {
    let tokens = match tokenize(text) {
        Ok(tokens) => tokens,
        Err(error) => {
            emit(io, fds.err, format!("sh: syntax error: {error}\n").as_bytes()).await;
            return Flow::Next(2);
        }
    };
    let mut words = Vec::new();
    let mut command_fds = fds;
    let mut skip = false;
    for token in tokens.into_iter().chain([Token::Separator(Separator::Then)]) {
        match token {
            Token::Word(word) => words.push(word),
            Token::Redirect(fd, target) => {
                let target = match target {
                    Target::Stream(STDOUT) => fds.out,
                    Target::Stream(_) => fds.err,
                    Target::Null => None,
                };
                if fd == STDOUT {
                    command_fds.out = target;
                } else {
                    command_fds.err = target;
                }
            }
            Token::Separator(separator) => {
                if !skip && !words.is_empty() {
                    let code = status.to_string();
                    let words: Vec<String> =
                        words.iter().map(|word| word.replace(STATUS, &code)).collect();
                    match command(&words, io, command_fds, depth, status).await {
                        Flow::Next(code) => status = code,
                        exit @ Flow::Exit(_) => return exit,
                    }
                }
                words.clear();
                command_fds = fds;
                skip = match separator {
                    Separator::Then => false,
                    Separator::And => status != 0,
                    Separator::Or => status == 0,
                };
            }
        }
    }
    Flow::Next(status)
}

async fn command(words: &[String], io: &mut Io, fds: Fds, depth: usize, status: i32) -> Flow {
    let (name, args) = match words.split_first() {
        Some(split) => split,
        None => return Flow::Next(status),
    };
    match name.as_str() {
        "exit" => {
            let code = match args.first() {
                None => status,
                Some(arg) => match arg.parse::<i64>() {
                    // The shell keeps the low 8 bits.
                    Ok(code) => i32::from(code.rem_euclid(256) as u8),
                    Err(_) => {
                        let text = format!("sh: exit: Illegal number: {arg}\n");
                        emit(io, fds.err, text.as_bytes()).await;
                        2
                    }
                },
            };
            Flow::Exit(code)
        }
        ":" => Flow::Next(0),
        _ => Flow::Next(program(name, args, io, fds, depth + 1).await),
    }
}

enum Token {
    Word(String),
    Redirect(u8, Target),
    Separator(Separator),
}

enum Target {
    Stream(u8),
    Null,
}

enum Separator {
    Then,
    And,
    Or,
}

fn tokenize(text: &str) -> Result<Vec<Token>, &'static str> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let finish = |tokens: &mut Vec<Token>, word: &mut String, in_word: &mut bool, quoted: bool| {
        if *in_word {
            let token = match (quoted, word.as_str()) {
                (false, ">&2" | "1>&2") => Token::Redirect(STDOUT, Target::Stream(STDERR)),
                (false, "2>&1") => Token::Redirect(STDERR, Target::Stream(STDOUT)),
                (false, ">/dev/null" | "1>/dev/null") => Token::Redirect(STDOUT, Target::Null),
                (false, "2>/dev/null") => Token::Redirect(STDERR, Target::Null),
                _ => Token::Word(std::mem::take(word)),
            };
            tokens.push(token);
            word.clear();
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                finish(&mut tokens, &mut word, &mut in_word, quoted);
                quoted = false;
            }
            '\n' | ';' => {
                finish(&mut tokens, &mut word, &mut in_word, quoted);
                quoted = false;
                tokens.push(Token::Separator(Separator::Then));
            }
            '&' | '|' if chars.peek() == Some(&c) => {
                chars.next();
                finish(&mut tokens, &mut word, &mut in_word, quoted);
                quoted = false;
                let separator = if c == '&' { Separator::And } else { Separator::Or };
                tokens.push(Token::Separator(separator));
            }
            '#' if !in_word => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        tokens.push(Token::Separator(Separator::Then));
                        break;
                    }
                }
            }
            '\'' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated quoted string"),
                    }
                }
            }
            '"' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated quoted string"),
                        },
                        Some('$') if chars.peek() == Some(&'?') => {
                            chars.next();
                            word.push(STATUS);
                        }
                        Some(c) => word.push(c),
                        None => return Err("unterminated quoted string"),
                    }
                }
            }
            '$' if chars.peek() == Some(&'?') => {
                chars.next();
                in_word = true;
                word.push(STATUS);
            }
            '\\' => {
                in_word = true;
                quoted = true;
                if let Some(c) = chars.next() {
                    if c != '\n' {
                        word.push(c);
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    finish(&mut tokens, &mut word, &mut in_word, quoted);
    Ok(tokens)
}

/// `\n` as a terminal writes it: `\r\n`.
fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 8);
    for &byte in data {
        if byte == b'\n' {
            out.push(b'\r');
        }
        out.push(byte);
    }
    out
}

/// Stands for `$?` in a word until the command runs (a private-use character).
const STATUS: char = '\u{E000}';
/// Longest line `sh` reads from stdin at once, in bytes.
const MAX_LINE: usize = 64 * 1024;
/// Largest payload of one multiplexed frame, in bytes.
const MAX_FRAME: usize = 64 * 1024;
/// Deepest nesting of `sh -c 'sh -c ...'`.
const MAX_SHELL_DEPTH: usize = 8;
/// Longest `sleep` that ends by itself; a longer one lasts until the process is stopped.
const MAX_SLEEP: Duration = Duration::from_secs(366 * 86400);

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `argv` with `input` on stdin; returns the exit code and the multiplexed output.
    async fn run_with(argv: &[&str], input: &[u8]) -> (i32, Vec<u8>) {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        let (tx, rx) = mpsc::channel(4);
        if !input.is_empty() {
            tx.send(Bytes::copy_from_slice(input)).await.unwrap();
        }
        drop(tx);
        let (writer, mut reader) = tokio::io::duplex(1 << 20);
        let (_paused, paused) = watch::channel(false);
        let mut io =
            Io { stdin: Stdin::new(rx), out: Output::Stream(Box::new(writer)), tty: false, paused };
        let code = run(&argv, &mut io).await;
        drop(io);
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut out).await.unwrap();
        (code, out)
    }

    /// Splits multiplexed output into (stdout, stderr) text.
    fn demux(mut bytes: &[u8]) -> (String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while bytes.len() >= 8 {
            let len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
            let payload = &bytes[8..8 + len];
            match bytes[0] {
                STDOUT => out.extend_from_slice(payload),
                _ => err.extend_from_slice(payload),
            }
            bytes = &bytes[8 + len..];
        }
        (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    /// Command line, stdin, exit code, stdout, stderr.
    type Case = (&'static [&'static str], &'static [u8], i32, &'static str, &'static str);

    #[tokio::test]
    async fn programs_print_and_exit_as_their_real_counterparts() {
        let cases: [Case; 15] = [
            (&["echo", "hello", "world"], b"", 0, "hello world\n", ""),
            (&["/bin/echo", "-n", "x"], b"", 0, "x", ""),
            (&["cat"], b"in\nput", 0, "in\nput", ""),
            (&["cat", "f"], b"", 1, "", "cat: can't open 'f': No such file or directory\n"),
            (&["true"], b"", 0, "", ""),
            (&["false"], b"", 1, "", ""),
            (&["sleep", "0.01"], b"", 0, "", ""),
            (&["sleep", "x"], b"", 1, "", "sleep: invalid number 'x'\n"),
            (&["sh", "-c", "echo out; echo err >&2; exit 3"], b"", 3, "out\n", "err\n"),
            (&["sh", "-c", "false && echo no || echo 'yes  it' # c"], b"", 0, "yes  it\n", ""),
            (&["sh", "-c", "nosuch arg"], b"", 127, "", "sh: nosuch: not found\n"),
            (&["sh", "-c", "echo \"a\\\"b\" 2>/dev/null >/dev/null; exit 257"], b"", 1, "", ""),
            (&["sh"], b"echo one\ncat\nrest\n", 0, "one\nrest\n", ""),
            (&["sh", "-c", "sh -c 'exit 4'"], b"", 4, "", ""),
            (&["sh", "-c", "false; echo $? \"($?)\" '$?'; echo $?"], b"", 0, "1 (1) $?\n0\n", ""),
        ];
        for (argv, input, code, stdout, stderr) in cases {
            let (got, output) = run_with(argv, input).await;
            assert_eq!((got, demux(&output)), (code, (stdout.into(), stderr.into())), "{argv:?}");
        }
        let (_, output) = run_with(&["sh", "-c", "echo 'open"], b"").await;
        assert_eq!(demux(&output).1, "sh: syntax error: unterminated quoted string\n");
    }

    #[test]
    fn missing_programs_fail_with_dockerds_text() {
        let argv = |words: &[&str]| words.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(check(&argv(&[]), "x"), Ok(()));
        assert_eq!(check(&argv(&["/bin/sh", "-c", "x"]), "x"), Ok(()));
        let prefix = "failed to create shim task: OCI runtime create failed";
        assert_eq!(
            check(&argv(&["nosuch"]), prefix).unwrap_err(),
            "failed to create shim task: OCI runtime create failed: runc create failed: unable \
             to start container process: exec: \"nosuch\": executable file not found in $PATH: \
             unknown"
        );
        let error = check(&argv(&["/bin/nosuch"]), "OCI runtime exec failed").unwrap_err();
        assert!(error.starts_with("OCI runtime exec failed: exec failed: "), "{error}");
        assert!(error.ends_with("stat /bin/nosuch: no such file or directory: unknown"), "{error}");
    }

    #[test]
    fn frames_have_docker_headers() {
        assert_eq!(&frames(STDOUT, b"hi\n")[..], b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n");
        let big = frames(STDERR, &vec![b'x'; MAX_FRAME + 1]);
        assert_eq!(big.len(), MAX_FRAME + 1 + 16);
        assert_eq!(&big[MAX_FRAME + 8..MAX_FRAME + 16], b"\x02\x00\x00\x00\x00\x00\x00\x01");
        assert_eq!(crlf(b"a\nb"), b"a\r\nb");
    }
}
