"""Templates: loading from folders, inline templates, strict and sandboxed rendering."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from mailops.errors import InputError
from mailops.templates import (
    MessageTemplate,
    inline_template,
    list_templates,
    load_template,
    render,
    render_string,
)


def make_template(root: Path, name: str, subject: str, body: str, html: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text(subject, encoding="utf-8")
    (folder / "body.txt").write_text(body, encoding="utf-8")
    if html is not None:
        (folder / "body.html").write_text(html, encoding="utf-8")
    return folder


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    make_template(
        root,
        "renewal",
        "Renewal for {{ name }} due {{ due_date }}\n",
        "Hello {{ name }},\nyour plan renews on {{ due_date }}.\n",
        "<p>Hello {{ name }}, due {{ due_date }}</p>\n",
    )
    make_template(root, "payment", "Payment received", "Thanks {{ name }}!")
    return root


def test_load_and_render_folder_template(templates_dir: Path) -> None:
    template = load_template(templates_dir, "renewal")
    assert (template.name, template.subject_source, template.body_source, template.html_source) == (
        "renewal",
        "renewal/subject.txt",
        "renewal/body.txt",
        "renewal/body.html",
    )
    content = render(template, {"name": "Jane", "due_date": "2024-05-01"}, where="customers.csv row 1")
    # subject stripped of its trailing newline, body keeps it
    assert content.subject == "Renewal for Jane due 2024-05-01"
    assert content.text == "Hello Jane,\nyour plan renews on 2024-05-01.\n"
    assert content.html == "<p>Hello Jane, due 2024-05-01</p>\n"


def test_template_without_html_renders_none(templates_dir: Path) -> None:
    template = load_template(templates_dir, "payment")
    assert template.html_source is None
    assert render(template, {"name": "Jo"}, where="message").html is None


def test_compiled_once_rendered_many_times(templates_dir: Path) -> None:
    template = load_template(templates_dir, "payment")
    texts = [render(template, {"name": f"N{i}"}, where="message").text for i in range(3)]
    assert texts == ["Thanks N0!", "Thanks N1!", "Thanks N2!"]


def test_list_templates_only_complete_folders(templates_dir: Path) -> None:
    (templates_dir / "half").mkdir()
    (templates_dir / "half" / "subject.txt").write_text("x")
    (templates_dir / "README.txt").write_text("not a template")
    assert list_templates(templates_dir) == ["payment", "renewal"]
    assert list_templates(templates_dir / "missing") == []


def test_unknown_template_lists_available(templates_dir: Path) -> None:
    with pytest.raises(InputError) as info:
        load_template(templates_dir, "renewl")
    assert str(info.value) == (
        f"unknown template 'renewl'; available templates: payment, renewal (in {templates_dir}); "
        f"fix --template or create {templates_dir / 'renewl'}/subject.txt and body.txt (or body.html)"
    )


def test_unknown_template_when_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_template(tmp_path / "nope", "x")
    assert "available templates: (none)" in str(info.value)


def test_template_name_cannot_escape_folder(templates_dir: Path) -> None:
    with pytest.raises(InputError, match=r"^unknown template '\.\./templates/renewal'"):
        load_template(templates_dir, "../templates/renewal")


def test_incomplete_template_names_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "t" / "half"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("hi")
    with pytest.raises(InputError) as info:
        load_template(tmp_path / "t", "half")
    assert str(info.value) == (
        f"{folder}: template has no body.txt or body.html; create {folder / 'body.txt'} "
        "(or body.html: the text part is then generated from it)"
    )


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    folder = make_template(tmp_path / "t", "broken", "ok", "line one\n{{ name }\n")
    with pytest.raises(InputError) as info:
        load_template(tmp_path / "t", "broken")
    assert str(info.value) == (
        f"{folder / 'body.txt'} line 2: template syntax error: unexpected '}}'; fix the template"
    )


def test_syntax_error_in_inline_body() -> None:
    with pytest.raises(InputError) as info:
        inline_template("Hi", "a\nb\n{% if x %}", body_source="notes/body.txt")
    assert str(info.value) == (
        "notes/body.txt line 3: template syntax error: Unexpected end of template. Jinja was looking for the "
        "following tags: 'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'; "
        "fix the template"
    )


def test_template_not_utf8(tmp_path: Path) -> None:
    folder = make_template(tmp_path / "t", "latin", "ok", "x")
    (folder / "body.txt").write_bytes("Grüße".encode("latin-1"))
    with pytest.raises(InputError) as info:
        load_template(tmp_path / "t", "latin")
    assert str(info.value) == f"{folder / 'body.txt'}: not UTF-8 text; save the file as UTF-8"


def test_bom_in_template_is_dropped(tmp_path: Path) -> None:
    folder = make_template(tmp_path / "t", "bom", "x", "x")
    (folder / "subject.txt").write_bytes("\ufeffHallo {{ name }}".encode())
    content = render(load_template(tmp_path / "t", "bom"), {"name": "Jo"}, where="message")
    assert content.subject == "Hallo Jo"


def test_missing_variable_names_variable_file_and_row(templates_dir: Path) -> None:
    template = load_template(templates_dir, "renewal")
    with pytest.raises(InputError) as info:
        render(template, {"name": "Jane"}, where="customers.csv row 3")
    assert str(info.value) == (
        "customers.csv row 3: template renewal/subject.txt: variable 'due_date' is not defined; "
        "add a 'due_date' column or pass --var due_date=..."
    )


def test_missing_variable_in_body_without_data_file(templates_dir: Path) -> None:
    template = load_template(templates_dir, "payment")
    with pytest.raises(InputError) as info:
        render(template, {}, where="message", from_data=False)
    assert str(info.value) == (
        "message: template payment/body.txt: variable 'name' is not defined; pass --var name=..."
    )


def test_undefined_in_if_is_an_error_not_false() -> None:
    template = inline_template("s", "{% if vip %}VIP{% endif %}")
    with pytest.raises(InputError, match="variable 'vip' is not defined"):
        render(template, {}, where="message")
    # the documented way to make a variable optional
    optional = inline_template("s", "{% if vip is defined %}VIP{% endif %}.")
    assert render(optional, {}, where="message").text == "."


def test_missing_attribute_is_an_error() -> None:
    template = inline_template("s", "{{ sender.phone }}")
    with pytest.raises(InputError) as info:
        render(template, {"sender": {"email": "a@example.com"}}, where="customers.csv row 1")
    assert str(info.value) == (
        "customers.csv row 1: template --body: 'dict object' has no attribute 'phone'; "
        "check the name in the template and in the data"
    )


def test_html_is_autoescaped_text_is_not(tmp_path: Path) -> None:
    make_template(tmp_path / "t", "esc", "{{ v }}", "{{ v }}\n", "<p>{{ v }}</p>")
    content = render(load_template(tmp_path / "t", "esc"), {"v": "Tom & <b>Jerry</b>"}, where="message")
    assert content.subject == "Tom & <b>Jerry</b>"
    assert content.text == "Tom & <b>Jerry</b>\n"
    assert content.html == "<p>Tom &amp; &lt;b&gt;Jerry&lt;/b&gt;</p>"


def test_sandbox_blocks_python_internals() -> None:
    template = inline_template("s", "{{ ''.__class__.__mro__ }}")
    with pytest.raises(InputError) as info:
        render(template, {}, where="customers.csv row 2")
    assert str(info.value) == (
        "customers.csv row 2: template --body: blocked by the sandbox: access to attribute '__class__' of 'str' "
        "object is unsafe; templates may not reach Python internals or change values, remove that expression"
    )


def test_sandbox_blocks_mutating_shared_values() -> None:
    shared = {"tags": ["a"]}
    template = inline_template("s", "{{ tags.append('x') }}")
    with pytest.raises(InputError, match="blocked by the sandbox: access to attribute 'append' of 'list'"):
        render(template, shared, where="message")
    assert shared == {"tags": ["a"]}


def test_python_error_while_rendering_is_input_error() -> None:
    template = inline_template("s", "{{ n + 1 }}")
    with pytest.raises(InputError) as info:
        render(template, {"n": "5"}, where="customers.csv row 4")
    assert str(info.value) == (
        "customers.csv row 4: template --body: error while rendering: TypeError: can only concatenate str "
        '(not "int") to str; fix the template or the data'
    )


def test_subject_must_be_one_line() -> None:
    template = inline_template("Hello {{ name }}", "b")
    assert render(template, {"name": "  Jo  "}, where="message").subject == "Hello   Jo"
    for bad in ("Jo\nBcc: x@example.com", "Jo\rX", "Jo\u2028X", "Jo\x85X"):
        with pytest.raises(InputError) as info:
            render(template, {"name": bad}, where="customers.csv row 5")
        assert str(info.value) == (
            "customers.csv row 5: 'name' holds a line break and the subject (--subject) uses it; "
            "a subject must be one line: remove the line break from 'name'"
        )
    with pytest.raises(InputError) as info:  # the template's own line break: no value to blame
        render(inline_template("Hello\n{{ name }}", "b"), {"name": "Jo"}, where="customers.csv row 5")
    assert str(info.value) == (
        "customers.csv row 5: template --subject: the subject must be one line but renders with a line break; "
        "remove line breaks from the subject template and from the values it uses"
    )


def test_none_renders_empty() -> None:
    template = inline_template("s", "[{{ v }}]")
    assert render(template, {"v": None}, where="message").text == "[]"


def test_include_shared_footer(tmp_path: Path) -> None:
    root = tmp_path / "t"
    make_template(root, "with-footer", "s", "Hi\n{% include '_shared/footer.txt' %}")
    (root / "_shared").mkdir()
    (root / "_shared" / "footer.txt").write_text("-- {{ sender }}\n")
    content = render(load_template(root, "with-footer"), {"sender": "Sales"}, where="message")
    assert content.text == "Hi\n-- Sales\n"
    assert list_templates(root) == ["with-footer"]


def test_inline_template_sources() -> None:
    template = inline_template("Hi {{ x }}", "Body {{ x }}\n")
    assert isinstance(template, MessageTemplate)
    assert (template.name, template.subject_source, template.body_source, template.html_source) == (
        None,
        "--subject",
        "--body",
        None,
    )
    content = render(template, {"x": "1"}, where="message")
    assert (content.subject, content.text, content.html) == ("Hi 1", "Body 1\n", None)


def test_render_string_plain_and_templated() -> None:
    assert render_string("invoices/a.pdf", {}, where="r", source="column 'attachments'") == "invoices/a.pdf"
    assert render_string("inv/{{ no }}.pdf", {"no": 7}, where="r", source="c") == "inv/7.pdf"
    with pytest.raises(InputError) as info:
        render_string("inv/{{ missing }}.pdf", {}, where="data.csv row 2", source="column 'attachments'")
    assert str(info.value) == (
        "data.csv row 2: template column 'attachments': variable 'missing' is not defined; "
        "add a 'missing' column or pass --var missing=..."
    )
    with pytest.raises(InputError) as info:
        render_string("inv/{{ no }.pdf", {}, where="data.csv row 2", source="column 'attachments'")
    assert str(info.value) == (
        "data.csv row 2: template column 'attachments': template syntax error: unexpected '}'; fix the value"
    )


# A template of nothing but text and {{ name }} renders without Jinja's runtime (templates._pieces); these
# values go through both paths and must come out the same.
_PLAIN_VALUES = {
    "text": "Grüße <b>&</b> {{ not rendered }}",
    "nothing": None,
    "number": 42,
    "real": 0.1 + 0.2,
    "flag": False,
    "items": ["a", 1, None],
    "mapping": {"k": "v"},
    "day": date(2026, 12, 24),
    "empty": "",
}


@pytest.mark.parametrize(
    "source",
    [
        "",
        "plain text only\n",
        "{{ text }}",
        "Dear {{ text }},\r\n{{ nothing }}|{{ number }}|{{ real }}|{{ flag }}\n{{ items }} {{ mapping }} {{ day }}{{ empty }}\n",
        "{{text}}{{ number }}{# a comment #}{%- raw %}{{ x }}{% endraw %}  {{- day -}}  end\n\n",
    ],
)
def test_plain_template_renders_as_jinja_does(source: str) -> None:
    template = inline_template("s", source)
    assert template._body is not None and template._body.pieces is not None  # the direct path is taken
    assert render(template, _PLAIN_VALUES, where="message").text == template._body.template.render(_PLAIN_VALUES)


@pytest.mark.parametrize(
    "source",
    [
        "{{ text | upper }}",
        "{% if flag %}x{% endif %}",
        "{{ self }}",
        "{{ none }}",
        "{{ items[0] }}",
        "{{ 'a' ~ text }}",
    ],
)
def test_other_templates_render_through_jinja(source: str) -> None:
    template = inline_template("s", source)
    assert template._body is not None and template._body.pieces is None
    assert render(template, _PLAIN_VALUES, where="message").text == template._body.template.render(_PLAIN_VALUES)


def test_plain_template_bounds_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    template = inline_template("s", "{{ text }}{{ text }}")
    with pytest.raises(InputError) as info:
        render(template, {}, where="data.csv row 2")
    assert str(info.value) == (
        "data.csv row 2: template --body: variable 'text' is not defined; add a 'text' column or pass --var text=..."
    )
    monkeypatch.setenv("MAILOPS_RENDER_MAX_CHARS", "1000")
    assert len(render(template, {"text": "x" * 500}, where="r").text) == 1000
    with pytest.raises(InputError) as info:
        render(template, {"text": "x" * 501}, where="data.csv row 3")
    assert str(info.value) == (
        "data.csv row 3: template --body: renders more than 1,000 characters; fix the template "
        "(or raise MAILOPS_RENDER_MAX_CHARS)"
    )


def test_html_template_is_escaped_by_jinja(tmp_path: Path) -> None:
    make_template(tmp_path, "t", "s {{ v }}", "{{ v }}", "<p>{{ v }}</p>")
    template = load_template(tmp_path, "t")
    assert template._html is not None and template._html.pieces is None  # escaping stays Jinja's
    assert template._subject.pieces is not None
    content = render(template, {"v": "<&>"}, where="message")
    assert (content.subject, content.text, content.html) == ("s <&>", "<&>", "<p>&lt;&amp;&gt;</p>")


def test_plain_sources_read_without_jinja_are_read_as_jinja_reads_them() -> None:
    """_plain_pieces reads text and {{ name }} without Jinja: for every source it accepts, Jinja's parser finds
    the same pieces and renders the same text; what it refuses still renders (through Jinja)."""
    import random

    from jinja2 import nodes

    from mailops.sandbox import _pieces, inline_env
    from mailops.templates import _plain_pieces, _render_pieces

    env = inline_env()
    fragments = ["{{", "}}", "{", "}", " ", "  ", "name", "x_1", "none", "self", "if", "\r\n", "\r", "\n", "{%", "{#"]
    fragments += ["-", "text", "Grüße", "\t", "{{ name }}", "{{x_1}}", "{{ none }}", "{{  name  }}", "{{ name -}}"]
    rng = random.Random(17)
    sources = ["", "plain", "{{ name }}", "a\r\nb\rc\n", "{{ name }}}", "{{{ name }}"]
    sources += ["".join(rng.choice(fragments) for _ in range(rng.randint(1, 9))) for _ in range(3000)]
    variables = {"name": "Zoë", "x_1": 7}
    accepted = 0
    for source in sources:
        pieces = _plain_pieces(source)
        if pieces is None:
            continue
        accepted += 1
        ast = env.parse(source)
        assert _pieces(ast, autoescape=False) is not None, source
        names = [text for is_name, text in pieces if is_name]
        assert names == [node.name for node in ast.find_all(nodes.Name)], source
        if set(names) <= set(variables):
            assert _render_pieces(pieces, variables) == env.from_string(source).render(variables), source
        else:  # a missing variable: Jinja renders it, to say which
            assert _render_pieces(pieces, variables) is None
    assert accepted > 300


def test_a_plain_template_renders_without_loading_jinja(tmp_path: Path) -> None:
    """Loading Jinja costs every mail merge 30-50 ms before its first message; plain templates do without."""
    import subprocess
    import sys

    make_template(tmp_path, "plain", "Hi {{ name }}", "Dear {{ name }},\r\nsee you.\n")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mailops.templates import load_template, render, render_string\n"
        f"t = load_template(Path({str(tmp_path)!r}), 'plain')\n"
        "c = render(t, {'name': 'Zoë'}, where='m')\n"
        "print(repr((c.subject, c.text, render_string('inv/{{ name }}.pdf', {'name': 'a'}, where='m', source='s'))))\n"
        "print('jinja2' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["('Hi Zoë', 'Dear Zoë,\\nsee you.\\n', 'inv/a.pdf')", "False"]
