//! Process hygiene at start: this process holds the client secret in memory, so it must
//! never leave a core dump (a panic in the release build aborts).

/// Turns core dumps off for this process: the soft `RLIMIT_CORE` becomes 0 (the hard
/// limit stays, so a command run by `exec` may raise it again), and on Linux the process
/// is made non-dumpable (`PR_SET_DUMPABLE` 0), which also keeps other processes of the
/// same user from reading its memory or `/proc/<pid>/root`. Best effort: where a call is
/// refused, the other still holds.
pub fn no_core_dumps() {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_CORE) {
            let _ = setrlimit(Resource::RLIMIT_CORE, 0, hard);
        }
    }
    #[cfg(target_os = "linux")]
    {
        let _ = nix::sys::prctl::set_dumpable(false);
    }
}
