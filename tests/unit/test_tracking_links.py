"""The MLflow link that opens a study's runs table, and the parent run's description."""

from __future__ import annotations

from rerank_ray.study.tracking import NOTE_LIMIT, experiment_url, mlflow_lines, run_note, run_url


def test_experiment_url_opens_the_runs_table_in_model_training_mode():
    # MLflow 3.17's UI picks the experiment page from the workflowType URL parameter (default
    # genai: the GenAI overview), not from the experiment-kind tag.
    assert experiment_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    )
    assert (
        run_url("http://h:5000", "7", "abc")
        == "http://h:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    )
    lines = mlflow_lines("sqlite:///x.db", "quickstart", "abc", "7")
    assert lines[-1] == (
        "browse `rerank-ray ui`, then http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    )


def test_run_note_is_the_report_cut_at_a_line_to_the_tag_limit():
    short = "| a | b |\n|---|---|\n"
    assert run_note(short) == short
    long = "".join(f"| row {i} | {'x' * 50} |\n" for i in range(400))
    note = run_note(long)
    assert len(note) <= NOTE_LIMIT
    kept, pointer = note.split("\n\n(cut here")
    assert long.startswith(kept + "\n") and "report/report.md" in pointer


def test_report_first_puts_the_table_at_the_top_once(tmp_path):
    from types import SimpleNamespace

    from rerank_ray.study.tracking import report_first

    table = "| student | dl19 |\n|---|---|\n| l1 | 0.3 |"
    path = tmp_path / "report.md"
    path.write_text(f"# Study s\n\nGenerated today.\n\n{table}\n\n## Costs\n")
    note = report_first(SimpleNamespace(markdown_path=path, table_markdown=table + "\n"))
    assert note.startswith(table + "\n\n# Study s") and note.count("| l1 | 0.3 |") == 1 and "## Costs" in note
