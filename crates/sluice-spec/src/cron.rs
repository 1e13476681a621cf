//! Freeze windows: five-field cron expressions (`minute hour day month weekday`)
//! that match the minutes during which deployments are denied.

/// A validated cron expression; a minute is frozen when every field matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreezeWindow {
    pub expression: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
}

const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

impl FreezeWindow {
    /// Parses `* 16-23 * * fri`; names of weekdays and months are accepted.
    pub fn parse(expression: &str) -> Result<Self, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "a freeze window has five fields (minute hour day month weekday), found {}",
                fields.len()
            ));
        };
        Ok(Self {
            expression: expression.to_string(),
            minutes: field(minute, "minute", 0, 59, &[])?,
            hours: field(hour, "hour", 0, 23, &[])?,
            days: field(day, "day", 1, 31, &[])?,
            months: field(month, "month", 1, 12, &MONTHS)?,
            weekdays: weekday_field(weekday)?,
        })
    }

    /// Whether the given minute (weekday 0 = Sunday, month and day from 1) is frozen.
    pub fn contains(&self, minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> bool {
        let has = |set: u64, value: u32| set & (1 << value) != 0;
        has(self.minutes, minute)
            && has(self.hours, hour)
            && has(self.days, day)
            && has(self.months, month)
            && has(self.weekdays, weekday % 7)
    }
}

fn weekday_field(text: &str) -> Result<u64, String> {
    // 7 is Sunday too, as in most crons.
    let set = field(text, "weekday", 0, 7, &WEEKDAYS)?;
    Ok((set | (set >> 7)) & 0x7f)
}

fn field(text: &str, what: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("`{step}` is not a step in the {what} field"))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (
                    value(a, what, min, max, names)?,
                    value(b, what, min, max, names)?,
                ),
                None => {
                    let v = value(range, what, min, max, names)?;
                    (v, if step > 1 { max } else { v })
                }
            },
        };
        if low > high {
            return Err(format!("the {what} range `{range}` runs backwards"));
        }
        for v in (low..=high).step_by(step as usize) {
            set |= 1 << v;
        }
    }
    Ok(set)
}

fn value(text: &str, what: &str, min: u32, max: u32, names: &[&str]) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        // Month names count from 1, weekday names from 0.
        return Ok(i as u32 + min);
    }
    match text.parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{text}` is out of range for the {what} field ({min}-{max})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friday_evenings_are_frozen() {
        let w = FreezeWindow::parse("* 16-23 * * fri").unwrap();
        assert!(w.contains(0, 16, 13, 11, 5));
        assert!(w.contains(59, 23, 13, 11, 5));
        assert!(!w.contains(0, 15, 13, 11, 5));
        assert!(!w.contains(0, 16, 14, 11, 6));
    }

    #[test]
    fn names_lists_steps_and_sunday_as_seven() {
        let w = FreezeWindow::parse("*/15 0 24-26 dec 7").unwrap();
        assert!(w.contains(45, 0, 25, 12, 0));
        assert!(!w.contains(44, 0, 25, 12, 0));
        assert!(!w.contains(0, 0, 25, 11, 0));
    }

    #[test]
    fn refuses_bad_fields() {
        assert!(
            FreezeWindow::parse("* * *")
                .unwrap_err()
                .contains("five fields")
        );
        assert!(
            FreezeWindow::parse("60 * * * *")
                .unwrap_err()
                .contains("minute")
        );
        assert!(
            FreezeWindow::parse("* 5-2 * * *")
                .unwrap_err()
                .contains("backwards")
        );
        assert!(
            FreezeWindow::parse("* * * * funday")
                .unwrap_err()
                .contains("weekday field")
        );
    }
}
