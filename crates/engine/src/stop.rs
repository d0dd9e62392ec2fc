//! Stop strings: text is held back while it could still be the start of a stop string, and
//! generation ends before a stop string is emitted.

pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What to emit after a push, and whether a stop string was reached.
#[derive(Debug, PartialEq)]
pub struct StopCheck {
    pub emit: String,
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopCheck {
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let emit = self.held[..at].to_string();
            self.held.clear();
            return StopCheck {
                emit,
                stopped: true,
            };
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let emit = self.held[..keep].to_string();
        self.held.drain(..keep);
        StopCheck {
            emit,
            stopped: false,
        }
    }

    /// Releases held text at the end of generation (it did not become a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_before_a_stop_string_split_across_pushes() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc E").emit, "abc ");
        let c = m.push("NDxyz");
        assert_eq!(
            c,
            StopCheck {
                emit: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn releases_held_text_that_did_not_stop() {
        let mut m = StopMatcher::new(vec!["\n\n".into()]);
        assert_eq!(m.push("a\n").emit, "a");
        assert_eq!(m.push("b").emit, "\nb");
        assert_eq!(m.push("c\n").emit, "c");
        assert_eq!(m.finish(), "\n");
    }
}
