//! Maps a field path (`listeners[1].cluster`) to the line it sits on in the YAML source, so that
//! validation errors found after deserialisation can still point at a line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

pub struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    /// In a mapping: the path of the mapping, and the key whose value comes next (if any).
    Map { path: String, key: Option<String> },
    /// In a sequence: the path of the sequence and the index of the next item.
    Seq { path: String, next: usize },
}

struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Builder {
    /// The path of the value that starts now, advancing the parent's state.
    fn value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => key.take().map(|k| join(path, &k)),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key, path }) = self.stack.last_mut() {
                    if key.is_none() {
                        // A key: its line is where the field is.
                        self.lines.entry(join(path, &value)).or_insert(line);
                        *key = Some(value);
                        return;
                    }
                }
                if let Some(p) = self.value_path() {
                    self.lines.entry(p).or_insert(line);
                }
            }
            Event::MappingStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.value_path();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    pub fn build(text: &str) -> LineIndex {
        let mut b = Builder {
            stack: Vec::new(),
            lines: HashMap::new(),
        };
        let mut parser = Parser::new_from_str(text);
        // A syntax error leaves a partial index, which is still useful for what came before it.
        let _ = parser.load(&mut b, false);
        LineIndex { lines: b.lines }
    }

    /// The line of `path`, or of its nearest ancestor that is known.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(&l) = self.lines.get(p) {
                return Some(l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}
