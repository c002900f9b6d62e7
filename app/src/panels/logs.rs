//! Log panel: the last lines a local node printed.

use egui::{Color32, RichText, Ui};

use crate::palette;
use crate::supervisor::{LogLine, Stream};

/// Draws the node picker and the log of the selected node.
pub fn show(ui: &mut Ui, nodes: &[String], selected: &mut Option<String>, lines: &[LogLine]) {
    ui.horizontal(|ui| {
        let label = ui.label(RichText::new("Log").strong());
        let current = selected
            .clone()
            .unwrap_or_else(|| "choose a node".to_owned());
        egui::ComboBox::from_id_salt("log-node")
            .selected_text(current)
            .show_ui(ui, |ui| {
                for node in nodes {
                    ui.selectable_value(selected, Some(node.clone()), node);
                }
            })
            .response
            .labelled_by(label.id);
        ui.label(RichText::new(format!("{} lines", lines.len())).weak());
    });
    ui.separator();
    egui::ScrollArea::vertical()
        .stick_to_bottom(true)
        .auto_shrink([false, false])
        .show(ui, |ui| {
            if selected.is_none() {
                ui.label(RichText::new("Pick a node to see what it prints.").weak());
            }
            for line in lines {
                ui.label(
                    RichText::new(&line.text)
                        .monospace()
                        .color(line_color(ui, line)),
                );
            }
        });
}

fn line_color(ui: &Ui, line: &LogLine) -> Color32 {
    if line.stream == Stream::Supervisor {
        return palette::BLUE;
    }
    if line.text.contains(" ERROR ") {
        palette::RED
    } else if line.text.contains(" WARN ") {
        palette::AMBER
    } else {
        ui.visuals().text_color()
    }
}
