//! Names and paths from outside: the identifier rule for names that become
//! paths (services, environments, jobs, rules), the rule for secrets' names
//! (they become environment variables), and [`inside`], the one helper
//! every path built from such a string goes through.

use std::path::{Component, Path, PathBuf};

/// The longest name: a DNS label's limit, so a name fits anywhere.
pub const NAME_MAX: usize = 63;

/// Why `text` is not a plain name, or `None` when it is one:
/// `[a-z0-9][a-z0-9-]{0,62}`.
pub fn name_problem(text: &str) -> Option<&'static str> {
    let mut chars = text.chars();
    match chars.next() {
        None => Some("it is empty"),
        Some(_) if text.len() > NAME_MAX => Some("it is longer than 63 characters"),
        Some(first) if !(first.is_ascii_lowercase() || first.is_ascii_digit()) => {
            Some("it must start with a lowercase letter or a digit")
        }
        _ if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') => {
            Some("only lowercase letters, digits and `-` are allowed")
        }
        _ => None,
    }
}

/// Why `name` cannot be a secret's name, if it cannot: secrets become
/// environment variables, and some would change how every step runs.
pub fn secret_name_problem(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Some(format!(
            "`{}` is not a valid variable name: use letters, digits and `_`",
            name.chars().take(128).collect::<String>()
        ));
    }
    let upper = name.to_ascii_uppercase();
    let reserved = [
        "PATH", "HOME", "SHELL", "USER", "IFS", "ENV", "BASH_ENV", "CI",
    ];
    if reserved.contains(&upper.as_str())
        || upper.starts_with("LD_")
        || upper.starts_with("SLUICE_")
    {
        return Some(format!(
            "`{name}` would change how every step runs (PATH, HOME, LD_*, SLUICE_* and the like are reserved)"
        ));
    }
    None
}

/// A path that would leave the directory it was meant for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{part}` cannot be a path under {parent}: {why}")]
pub struct PathEscape {
    pub parent: String,
    pub part: String,
    pub why: &'static str,
}

/// `parent/relative`, only when `relative` names something inside `parent`:
/// not empty, not absolute, no `..` and no NUL (`./`, `//` and a trailing
/// `/` are harmless). The check is on the text: the directories Sluice
/// builds in are its own, so none of their components is another's link.
pub fn inside(parent: &Path, relative: &str) -> Result<PathBuf, PathEscape> {
    let escape = |why| PathEscape {
        parent: parent.display().to_string(),
        part: relative.chars().take(200).collect(),
        why,
    };
    let path = Path::new(relative);
    let mut normal = path
        .components()
        .filter(|c| *c != Component::CurDir)
        .peekable();
    if normal.peek().is_none() {
        return Err(escape("it names no file or directory"));
    }
    if relative.contains('\0') {
        return Err(escape("it contains a NUL byte"));
    }
    for component in normal {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(escape("it goes up with `..`")),
            _ => return Err(escape("it is absolute")),
        }
    }
    Ok(parent.join(path))
}

/// [`inside`] for a file that exists, with links followed: a release's
/// template or seed may be a symbolic link, and must not lead out of it.
pub fn existing_inside(parent: &Path, relative: &str) -> std::io::Result<PathBuf> {
    let path = inside(parent, relative).map_err(std::io::Error::other)?;
    let (real, root) = (path.canonicalize()?, parent.canonicalize()?);
    if !real.starts_with(&root) {
        return Err(std::io::Error::other(PathEscape {
            parent: parent.display().to_string(),
            part: relative.chars().take(200).collect(),
            why: "it is a link that leads outside",
        }));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers() {
        for good in ["shop", "pre-prod", "a", "v2", "0day", &"a".repeat(63)] {
            assert_eq!(name_problem(good), None, "{good}");
        }
        let table = [
            ("", "it is empty"),
            ("..", "it must start with a lowercase letter or a digit"),
            (".", "it must start with a lowercase letter or a digit"),
            ("-x", "it must start with a lowercase letter or a digit"),
            ("Shop", "it must start with a lowercase letter or a digit"),
            ("a/b", "only lowercase letters, digits and `-` are allowed"),
            ("a..b", "only lowercase letters, digits and `-` are allowed"),
            ("a_b", "only lowercase letters, digits and `-` are allowed"),
            ("café", "only lowercase letters, digits and `-` are allowed"),
            ("a\0", "only lowercase letters, digits and `-` are allowed"),
        ];
        for (bad, why) in table {
            assert_eq!(name_problem(bad), Some(why), "{bad:?}");
        }
        assert_eq!(
            name_problem(&"a".repeat(64)),
            Some("it is longer than 63 characters")
        );
    }

    #[test]
    fn paths_stay_inside_their_parent() {
        let root = Path::new("/data");
        assert_eq!(inside(root, "envs").unwrap(), Path::new("/data/envs"));
        assert_eq!(
            inside(root, "fixtures/seed.sql").unwrap(),
            Path::new("/data/fixtures/seed.sql")
        );
        assert_eq!(inside(root, "./app/").unwrap(), Path::new("/data/./app/"));
        for bad in ["", "..", ".", "./", "../x", "a/../../x", "/etc", "a\0b"] {
            let error = inside(root, bad).unwrap_err();
            assert_eq!(error.parent, "/data", "{bad:?}");
        }
        assert_eq!(
            inside(root, "..").unwrap_err().to_string(),
            "`..` cannot be a path under /data: it goes up with `..`"
        );
    }

    #[test]
    fn a_link_that_leads_outside_is_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-paths-{}", std::process::id()));
        let release = dir.join("release");
        std::fs::create_dir_all(release.join("config")).unwrap();
        std::fs::write(dir.join("secret"), "token").unwrap();
        std::fs::write(release.join("config/app.tmpl"), "x").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), release.join("config/evil.tmpl")).unwrap();
        std::os::unix::fs::symlink("app.tmpl", release.join("config/alias.tmpl")).unwrap();
        assert!(existing_inside(&release, "config/app.tmpl").is_ok());
        assert!(
            existing_inside(&release, "config/alias.tmpl").is_ok(),
            "a link within"
        );
        let error = existing_inside(&release, "config/evil.tmpl").unwrap_err();
        assert!(error.to_string().contains("leads outside"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
