//! The live terminal view of `ferrocorn top`: ratatui on crossterm, in the
//! alternate screen; refreshed every interval; q, Esc or Ctrl-C quits. The
//! terminal is given back as it was on every way out (a guard restores it,
//! a panic included).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::crossterm::ExecutableCommand;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row as TableRow, Table};
use ratatui::{DefaultTerminal, Frame};

use super::{cells, restarts_text, rows, title, Sample, Source, HEADERS};

/// Restores the terminal when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = std::io::stdout().execute(LeaveAlternateScreen);
        let _ = std::io::stdout().execute(ratatui::crossterm::cursor::Show);
    }
}

/// What the screen shows: the last two samples, or why there is none.
struct View {
    before: Option<Sample>,
    now: Option<Sample>,
    error: Option<String>,
}

pub(crate) fn run(source: &Source, interval: Duration) -> Result<(), String> {
    if !std::io::stdout().is_terminal() {
        return Err("the live view needs a terminal; use --once for a plain table".to_owned());
    }
    // The first sample before the screen changes: a server that cannot be
    // read is an error message on the normal screen.
    let first = source.fetch()?;
    enable_raw_mode().map_err(|e| format!("cannot set up the terminal: {e}"))?;
    let restore = Restore;
    std::io::stdout()
        .execute(EnterAlternateScreen)
        .map_err(|e| format!("cannot set up the terminal: {e}"))?;
    let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
    let mut terminal =
        ratatui::Terminal::new(backend).map_err(|e| format!("cannot set up the terminal: {e}"))?;
    let mut view = View {
        before: None,
        now: Some(first),
        error: None,
    };
    let result = live(&mut terminal, source, interval, &mut view);
    drop(restore);
    result
}

fn live(
    terminal: &mut DefaultTerminal,
    source: &Source,
    interval: Duration,
    view: &mut View,
) -> Result<(), String> {
    let mut next = Instant::now() + interval;
    loop {
        terminal
            .draw(|f| draw(f, source, view))
            .map_err(|e| format!("drawing: {e}"))?;
        // Keys until the next refresh.
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if event::poll(left).map_err(|e| format!("reading the terminal: {e}"))? {
                match event::read().map_err(|e| format!("reading the terminal: {e}"))? {
                    Event::Key(k) if k.kind != KeyEventKind::Release => {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                            return Ok(());
                        }
                    }
                    Event::Resize(..) => break,
                    _ => {}
                }
            }
        }
        if Instant::now() >= next {
            next = Instant::now() + interval;
            match source.fetch() {
                Ok(s) => {
                    view.before = view.now.replace(s);
                    view.error = None;
                }
                // The server restarting or gone: say so, keep trying.
                Err(e) => view.error = Some(e),
            }
        }
    }
}

fn draw(f: &mut Frame<'_>, source: &Source, view: &View) {
    let [top, table_area, bottom] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(3),
    ])
    .areas(f.area());
    let Some(now) = &view.now else { return };
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let status = match &view.error {
        Some(e) => Line::styled(format!("not updated: {e}"), bold),
        None => Line::from("q: quit"),
    };
    f.render_widget(
        Paragraph::new(vec![Line::styled(title(source, &now.doc), bold), status]),
        top,
    );
    let rows: Vec<TableRow<'_>> = rows(view.before.as_ref(), now)
        .iter()
        .map(|r| TableRow::new(cells(r)))
        .collect();
    let widths = [
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Min(20),
    ];
    let table = Table::new(rows, widths)
        .header(TableRow::new(HEADERS).style(bold))
        .block(Block::bordered().title(" workers "));
    f.render_widget(table, table_area);
    f.render_widget(
        Paragraph::new(restarts_text(&now.doc))
            .block(Block::bordered().title(" master: worker restarts by reason ")),
        bottom,
    );
}
