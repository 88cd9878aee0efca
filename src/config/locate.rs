//! Where each value of gateway.yaml sits: a pass over the YAML events that maps a config path
//! (`routes[2].upstream`) to its line and column. serde gives positions only for the first
//! structural error; this lets every semantic error carry its `FILE:LINE:COL` too.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

/// Positions of values (`path`) and of mapping keys (`path` + [`KEY`]).
#[derive(Debug, Default)]
pub struct Positions {
    map: HashMap<String, Pos>,
}

/// Suffix that asks for the position of a mapping key rather than of its value.
pub const KEY: &str = "#key";

impl Positions {
    /// Builds the map; a document the event parser cannot read yields an empty map (serde
    /// reports the syntax error with its own position).
    pub fn of(source: &str) -> Positions {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(source);
        let _ = parser.load(&mut walker, false);
        Positions { map: walker.map }
    }

    /// The position of `path`, else of its nearest recorded parent, else line 1.
    pub fn find(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[', '#']) {
                Some(i) => p = &p[..i],
                None => return Pos { line: 1, col: 1 },
            }
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    map: HashMap<String, Pos>,
}

fn pos(mark: &Marker) -> Pos {
    Pos {
        line: mark.line(),
        // yaml-rust2 counts columns from 0, serde_norway and editors from 1.
        col: mark.col() + 1,
    }
}

fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Walker {
    /// The path of the node that starts now, or `None` when the node is a mapping key (which
    /// is recorded and remembered instead).
    fn begin_node(&mut self, scalar: Option<&str>, mark: &Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => Some(format!("{path}[{index}]")),
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(child(path, &k)),
                None => {
                    let k = scalar.unwrap_or("?").to_string();
                    let key_path = format!("{}{KEY}", child(path, &k));
                    self.map.insert(key_path, pos(mark));
                    *key = Some(k);
                    None
                }
            },
        }
    }

    /// A value finished: the parent moves to its next key or index.
    fn end_node(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Seq { index, .. }) => *index += 1,
            Some(Frame::Map { key, .. }) => *key = None,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(ref value, ..) => {
                if let Some(path) = self.begin_node(Some(value), &mark) {
                    self.map.insert(path, pos(&mark));
                    self.end_node();
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.begin_node(None, &mark) {
                    self.map.insert(path, pos(&mark));
                    self.end_node();
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                // A collection used as a mapping key is not something gateway.yaml has; give
                // it a placeholder path so the walk stays in step.
                let path = match self.begin_node(None, &mark) {
                    Some(path) => path,
                    None => match self.stack.last_mut() {
                        Some(Frame::Map { path, key }) => {
                            let p = child(path, "?");
                            *key = None;
                            p
                        }
                        _ => String::from("?"),
                    },
                };
                self.map.entry(path.clone()).or_insert(pos(&mark));
                self.stack.push(if is_map {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.end_node();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_keys_and_items() {
        let src = "listen: 1.2.3.4:5\nroutes:\n  - id: a\n    path: /x\n    scopes:\n      read: [s1, s2]\n  - id: b\n    upstream: http://u\n";
        let p = Positions::of(src);
        assert_eq!(p.find("listen"), Pos { line: 1, col: 9 });
        assert_eq!(p.find("routes[0].path"), Pos { line: 4, col: 11 });
        assert_eq!(p.find("routes[0].scopes.read#key"), Pos { line: 6, col: 7 });
        assert_eq!(p.find("routes[0].scopes.read[1]"), Pos { line: 6, col: 18 });
        assert_eq!(p.find("routes[1].upstream"), Pos { line: 8, col: 15 });
        assert_eq!(p.find("routes[1].id"), Pos { line: 7, col: 9 });
        // Missing keys fall back to their parent.
        assert_eq!(p.find("routes[1].timeout"), p.find("routes[1]"));
    }
}
