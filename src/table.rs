//! Column layout for tables: Go `text/tabwriter` as talosctl uses it (`minwidth 0, padding 3`): every cell except
//! the last of a row is padded to its column's widest cell plus three spaces.

pub fn render(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] + 3 - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_docs_layout() {
        let rows = vec![
            vec!["NODE".to_string(), "172.20.0.2".to_string()],
            vec!["HEALTH".to_string(), "?".to_string()],
        ];
        assert_eq!(super::render(&rows), "NODE     172.20.0.2\nHEALTH   ?\n");
    }
}
