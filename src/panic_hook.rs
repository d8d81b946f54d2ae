//! A panic hook that reports where a panic happened but never what it said: a panic message can
//! hold request data or a value (`expect` text, assert operands, formatted errors), and stderr
//! ends up in logs.

use std::io::Write;
use std::panic::PanicHookInfo;

/// The line printed for a panic: thread and location, and a generic message.
pub fn describe(info: &PanicHookInfo<'_>) -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let at = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_else(|| "<unknown location>".into());
    format!("sidecred: internal error: thread '{name}' panicked at {at} (message withheld: it may contain secret data)")
}

/// Replaces the default hook (which prints the payload) for the whole process.
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        let line = describe(info);
        if tracing::dispatcher::has_been_set() {
            tracing::error!(target: "sidecred::panic", "{line}");
        } else {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }));
}
