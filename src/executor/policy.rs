//! A node's local command policy: which operator keys it trusts, which methods it accepts, and
//! which argvs `CLICommand` may run. Running anything is off until the node's config turns it on.
//!
//! Allow-list entries are argv patterns, one per string, split on whitespace: a word matches the
//! argument equal to it, `*` inside a word matches any run of characters within that one
//! argument, and a last word `...` matches any remaining arguments (or none).
//! `"systemctl restart nginx"` allows exactly that; `"systemctl restart *"` any one unit;
//! `"/usr/bin/uptime ..."` uptime with any flags.

use crate::command::{Command, Method, parse_public_key};
use crate::config::AgentCommandsConfig;

#[derive(Debug, Clone)]
pub struct Policy {
    trusted_keys: Vec<String>,
    methods: Vec<Method>,
    allow: Vec<Vec<String>>,
    allow_any: bool,
}

impl Policy {
    /// Builds the policy, refusing malformed keys and unknown methods with the config key named.
    pub fn from_config(config: &AgentCommandsConfig) -> Result<Self, String> {
        for key in &config.trusted_keys {
            parse_public_key(key).map_err(|e| format!("commands.trusted_keys: {e}"))?;
        }
        let methods = config
            .methods
            .iter()
            .map(|m| Method::parse(m).map_err(|e| format!("commands.methods: {}", e.problem)))
            .collect::<Result<Vec<_>, _>>()?;
        let allow = config
            .allow
            .iter()
            .map(|p| {
                let words: Vec<String> = p.split_whitespace().map(str::to_owned).collect();
                if words.is_empty() {
                    Err("commands.allow: an entry is empty".to_owned())
                } else {
                    Ok(words)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            trusted_keys: config.trusted_keys.clone(),
            methods,
            allow,
            allow_any: config.allow_any,
        })
    }

    /// Whether `command` is signed, correctly, by a key this node trusts.
    pub fn trusts(&self, command: &Command) -> bool {
        self.trusted_keys.iter().any(|k| k == &command.key) && command.verify_signature().is_ok()
    }

    /// Whether this node may run `command`; the error is the reason given back to the sender.
    pub fn check(&self, command: &Command) -> Result<(), String> {
        if self.trusted_keys.is_empty() {
            return Err(
                "this node trusts no operator key; list one in its config under [commands] trusted_keys"
                    .into(),
            );
        }
        if !self.trusted_keys.iter().any(|k| k == &command.key) {
            return Err(format!(
                "the key {} is not among this node's trusted operator keys",
                command.key
            ));
        }
        command.verify_signature()?;
        if !self.methods.contains(&command.method) {
            return Err(format!(
                "the method {} is not allowed on this node (commands.methods)",
                command.method
            ));
        }
        if command.method == Method::CliCommand && !self.allow_any {
            if self.allow.is_empty() {
                return Err("running commands is off on this node; allow them in its config under [commands] allow".into());
            }
            if !self.allow.iter().any(|p| argv_matches(p, &command.args)) {
                return Err(format!(
                    "the command {:?} is not in this node's allow-list (commands.allow)",
                    command.args
                ));
            }
        }
        Ok(())
    }
}

fn argv_matches(pattern: &[String], argv: &[String]) -> bool {
    let (words, rest_any) = match pattern.split_last() {
        Some((last, init)) if last == "..." => (init, true),
        _ => (pattern, false),
    };
    if argv.len() < words.len() || (!rest_any && argv.len() != words.len()) {
        return false;
    }
    words.iter().zip(argv).all(|(w, a)| word_matches(w, a))
}

/// Glob within one argument: `*` matches any run of characters.
fn word_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Kind, OperatorKey};

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn patterns() {
        let m = |p: &str, a: &str| argv_matches(&argv(p), &argv(a));
        assert!(m("uname -a", "uname -a"));
        assert!(!m("uname -a", "uname -a -r"));
        assert!(!m("uname -a", "uname"));
        assert!(m("systemctl restart *", "systemctl restart nginx"));
        assert!(!m("systemctl restart *", "systemctl stop nginx"));
        assert!(m(
            "systemctl restart nginx@*.service",
            "systemctl restart nginx@a.service"
        ));
        assert!(!m(
            "systemctl restart nginx@*.service",
            "systemctl restart nginx@a.socket"
        ));
        assert!(m("uptime ...", "uptime"));
        assert!(m("uptime ...", "uptime -p -s"));
        assert!(!m("uptime ...", "uptim -p"));
        assert!(word_matches("a*b*c", "aXXbYYc"));
        assert!(!word_matches("a*b*c", "aXXc"));
        assert!(!word_matches("ab*ba", "aba"));
    }

    #[test]
    fn refusals_name_the_reason() {
        let key = OperatorKey::generate();
        let mut config = AgentCommandsConfig::default();
        let mut cmd = Command {
            id: crate::command::new_id(),
            node: "n".into(),
            kind: Kind::CommandAck,
            method: Method::CliCommand,
            args: argv("rm -rf /"),
            timeout_ms: 1000,
            not_after_ms: i64::MAX,
            parallel: false,
            key: String::new(),
            signature: String::new(),
        };
        key.sign(&mut cmd);
        let check = |c: &AgentCommandsConfig, cmd: &Command| {
            Policy::from_config(c).unwrap().check(cmd).unwrap_err()
        };
        assert!(check(&config, &cmd).contains("trusts no operator key"));
        config.trusted_keys = vec![OperatorKey::generate().public()];
        assert!(check(&config, &cmd).contains("not among"));
        config.trusted_keys.push(key.public());
        assert!(check(&config, &cmd).contains("running commands is off"));
        config.allow = vec!["uname -a".into()];
        assert!(check(&config, &cmd).contains("not in this node's allow-list"));
        let mut forged = cmd.clone();
        forged.args = argv("uname -a");
        assert!(check(&config, &forged).contains("signature"));
        let mut ok = forged.clone();
        key.sign(&mut ok);
        Policy::from_config(&config).unwrap().check(&ok).unwrap();
        config.methods = vec!["Echo".into()];
        assert!(check(&config, &ok).contains("not allowed"));
        config.methods = vec!["Reboot".into()];
        assert!(Policy::from_config(&config).is_err());
    }
}
