//! The loader's command line: `crimg-loader IMAGE [--same-ids]`, or, run by
//! binfmt_misc, `IMAGE [--same-ids]` (the kernel puts the image path, or
//! with the `O` flag its name, in `argv[1]`; what follows is what the user
//! typed after the image).

use core::fmt;

use crate::sys::startup::Startup;

/// What the arguments after the image ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoaderArgs {
    /// A thread id of the image that is taken is an error (exit 10),
    /// instead of a new tid for that thread.
    pub same_ids: bool,
}

/// An argument the loader does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownArg {
    pub arg: &'static [u8],
}

impl fmt::Display for UnknownArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown argument {}; usage: crimg-loader IMAGE [--same-ids]",
            crate::message::Lossy(self.arg)
        )
    }
}

/// Parse `args`, the arguments after the image.
pub fn parse_args<'a>(
    args: impl Iterator<Item = &'static [u8]> + 'a,
) -> Result<LoaderArgs, UnknownArg> {
    let mut out = LoaderArgs::default();
    for arg in args {
        match arg {
            b"--same-ids" => out.same_ids = true,
            _ => return Err(UnknownArg { arg }),
        }
    }
    Ok(out)
}

/// The arguments of the running loader.
pub fn loader_args(startup: &Startup) -> Result<LoaderArgs, UnknownArg> {
    parse_args((2..startup.argc()).filter_map(|i| startup.arg(i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_ids_or_nothing() {
        assert_eq!(parse_args([].into_iter()), Ok(LoaderArgs::default()));
        assert_eq!(
            parse_args([&b"--same-ids"[..]].into_iter()),
            Ok(LoaderArgs { same_ids: true })
        );
        assert_eq!(
            parse_args([&b"--same-ids"[..], b"-x"].into_iter()),
            Err(UnknownArg { arg: b"-x" })
        );
    }
}
