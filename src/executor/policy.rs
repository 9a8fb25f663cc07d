//! A node's local command policy: which operator keys it trusts, which methods it accepts, and
//! which argvs `CLICommand` may run. Running anything is off until the node's config turns it on.
//!
//! The patterns' grammar is [`crate::argv_pattern`]'s; the config's values are checked by
//! `AgentCommandsConfig::parsed` (one place, also run when the config is read).

use crate::argv_pattern::Pattern;
use crate::command::{Command, Method};
use crate::config::AgentCommandsConfig;

#[derive(Debug, Clone)]
pub struct Policy {
    trusted_keys: Vec<String>,
    methods: Vec<Method>,
    allow: Vec<Pattern>,
    allow_any: bool,
}

impl Policy {
    /// Builds the policy, refusing malformed keys, unknown methods and malformed allow-list
    /// entries with the config key named.
    pub fn from_config(config: &AgentCommandsConfig) -> Result<Self, String> {
        let (methods, allow) = config.parsed()?;
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
            if !self.allow.iter().any(|p| p.matches(&command.args)) {
                return Err(format!(
                    "the command {:?} is not in this node's allow-list (commands.allow)",
                    command.args
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Kind, OperatorKey};

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn issue_14_the_policy_refuses_the_escape() {
        let key = OperatorKey::generate();
        let config = AgentCommandsConfig {
            trusted_keys: vec![key.public()],
            allow: vec!["cat /srv/pub/*".into()],
            ..AgentCommandsConfig::default()
        };
        let policy = Policy::from_config(&config).unwrap();
        let command = |args: &str| {
            let mut cmd = Command {
                id: crate::command::new_id(),
                node: "n".into(),
                kind: Kind::CommandAck,
                method: Method::CliCommand,
                args: argv(args),
                timeout_ms: 1000,
                not_after_ms: i64::MAX,
                parallel: false,
                key: String::new(),
                signature: String::new(),
            };
            key.sign(&mut cmd);
            cmd
        };
        policy.check(&command("cat /srv/pub/readme")).unwrap();
        let refused = policy
            .check(&command("cat /srv/pub/../../../etc/shadow"))
            .unwrap_err();
        assert!(refused.contains("allow-list"), "{refused}");
        let config = AgentCommandsConfig {
            allow: vec!["cat /srv/pub/***".into()],
            ..config
        };
        let e = Policy::from_config(&config).unwrap_err();
        assert!(e.starts_with("commands.allow: "), "{e}");
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
