//! The console menu as the harness drives it: wait for the prompt, read the numbered entries,
//! pick one by its label.
//!
//! The menu's layout belongs to the supervisor; only the contract is relied on here: a header
//! with `HAVmS`, numbered entries, and the prompt `Enter an option: ` (docs/node-runtime.md).

use std::time::Duration;

use regex::Regex;

use crate::error::{HarnessError, Result};
use crate::node::Node;

/// The menu's prompt, exactly.
pub const PROMPT: &str = "Enter an option: ";

/// A menu as printed once: its text (from the `HAVmS` header on) and its entries.
#[derive(Debug, Clone)]
pub struct Menu {
    pub text: String,
    pub entries: Vec<(String, String)>,
}

impl Menu {
    /// Reads a menu from the console text printed before a prompt.
    pub fn parse(before_prompt: &str) -> Menu {
        let text = match before_prompt.rfind("HAVmS") {
            Some(i) => {
                before_prompt[before_prompt[..i].rfind('\n').map_or(0, |n| n + 1)..].to_string()
            }
            None => before_prompt.to_string(),
        };
        // "1) Status", " 7. Shell", "[9] Power off"; columns are separated by 2+ spaces.
        let columns = Regex::new(r"[ \t]{2,}");
        let cell = Regex::new(r"^\[?(\d{1,2})[\]).:][ \t]+([A-Za-z].*?)[ \t]*$");
        let (Ok(columns), Ok(cell)) = (columns, cell) else {
            unreachable!("literal patterns")
        };
        let entries = text
            .lines()
            .flat_map(|line| columns.split(line.trim()).collect::<Vec<_>>())
            .filter_map(|c| {
                let caps = cell.captures(c)?;
                Some((caps[1].to_string(), caps[2].to_string()))
            })
            .collect();
        Menu { text, entries }
    }

    /// The number of the first entry whose label contains `label` (any case).
    pub fn number_of(&self, label: &str) -> Result<&str> {
        let want = label.to_lowercase();
        self.entries
            .iter()
            .find(|(_, l)| l.to_lowercase().contains(&want))
            .map(|(n, _)| n.as_str())
            .ok_or_else(|| {
                HarnessError::Check(format!(
                    "the menu has no {label:?} entry; it shows:\n{}",
                    self.text
                ))
            })
    }
}

/// Waits for the next menu prompt and returns the menu printed before it.
pub fn wait_menu(node: &mut Node, timeout: Duration) -> Result<Menu> {
    let m = node.wait_for(&regex::escape(PROMPT), timeout)?;
    Ok(Menu::parse(&m.before))
}

/// Picks the entry labelled `label` in `menu`.
pub fn choose(node: &mut Node, menu: &Menu, label: &str) -> Result<()> {
    let n = menu.number_of(label)?.to_string();
    log::info!("node {}: menu -> {n} ({label})", node.name());
    node.console().send_line(&n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_COLUMN: &str = "[    2.1] virtio_net 3. something\nHAVmS  node a (cluster demo)  config: ok\n\n 1) Status\n 2) Virtual machines\n 3) Shell\n 9) Power off\n";
    const TWO_COLUMNS: &str = "*** HAVmS node b ***\nconfig: ERROR /var/lib/havms/havms.yaml:3: unknown field\n  1. Status            6. Logs\n  7. Shell             8. Reboot\n  [9] Power off\n";

    #[test]
    fn entries_are_read_in_one_or_two_columns() {
        let m = Menu::parse(ONE_COLUMN);
        assert!(m.text.starts_with("HAVmS"), "{}", m.text);
        assert_eq!(m.number_of("shell").unwrap(), "3");
        assert_eq!(m.number_of("Power off").unwrap(), "9");
        assert_eq!(m.number_of("virtual").unwrap(), "2");
        let m = Menu::parse(TWO_COLUMNS);
        assert_eq!(m.number_of("Logs").unwrap(), "6");
        assert_eq!(m.number_of("Shell").unwrap(), "7");
        assert_eq!(m.number_of("Reboot").unwrap(), "8");
        assert_eq!(m.number_of("Power off").unwrap(), "9");
    }

    #[test]
    fn a_missing_entry_is_an_error_showing_the_menu() {
        let err = Menu::parse(ONE_COLUMN)
            .number_of("Maintenance")
            .unwrap_err();
        assert!(err.to_string().contains("no \"Maintenance\" entry"));
        assert!(err.to_string().contains("9) Power off"));
    }
}
