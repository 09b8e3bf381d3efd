"""The template language: variables, defaults, spintax and escaping."""

from __future__ import annotations

import html

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penguinmails import template
from penguinmails.template import TemplateError


def render(source: str, values: dict | None = None, seed: str = "m1@acme.test", **kw) -> str:
    return template.compile(source).render(values or {}, seed=seed, **kw)


def test_variables_defaults_and_filters():
    values = {"name": "john", "company": "", "plan": {"tier": "pro"}, "seats": 3}
    assert render("Hi {{name}}", values) == "Hi john"
    assert render("Hi {{ name | capitalize }}!", values) == "Hi John!"
    assert render('{{company | default: "there"}}', values) == "there"  # empty counts as missing
    assert render("{{missing | default: 'friend'}}", values) == "friend"
    assert render('{{ name | default: "x" | upper }}', values) == "JOHN"
    assert render("{{plan.tier}} x{{seats}}", values) == "pro x3"
    assert render('{{ "a | b" }}', values) == "a | b"


def test_a_missing_variable_without_default_is_an_error_not_a_blank():
    with pytest.raises(TemplateError, match="name"):
        render("Hi {{name}}")
    assert template.compile("{{a}} {{b | default: 'x'}} {x|{{c}}}").required == ("a", "c")


@pytest.mark.parametrize(
    "source",
    ["Hi {{name", "{{ }}", "{{ name | shout }}", "{{ name | default: there }}", "{{ na me }}"],
)
def test_syntax_errors(source):
    with pytest.raises(TemplateError):
        template.compile(source)


def test_values_are_escaped_in_html_but_not_in_text():
    values = {"name": '<b>"Tom" & Jerry</b>'}
    assert render("<p>{{name}}</p>", values, escape=html.escape) == (
        "<p>&lt;b&gt;&quot;Tom&quot; &amp; Jerry&lt;/b&gt;</p>"
    )
    assert render("{{name}}", values) == values["name"]


def test_spintax_is_deterministic_per_message_and_varies_across_messages():
    source = "{Hi|Hello|Hey} {{name}}, {quick|short} question"
    seen = {render(source, {"name": "Ann"}, seed=f"{i}@acme.test") for i in range(60)}
    assert len(seen) == 6  # every combination turns up
    for i in range(20):
        seed = f"{i}@acme.test"
        assert render(source, {"name": "Ann"}, seed=seed) == render(
            source, {"name": "Ann"}, seed=seed
        )


def test_nested_spintax_and_variables_inside_options():
    source = "{Hi {{name}}|{Hello|Hey} there}"
    outputs = {render(source, {"name": "Bo"}, seed=str(i)) for i in range(60)}
    assert outputs == {"Hi Bo", "Hello there", "Hey there"}


def test_braces_without_a_pipe_are_text():
    css = "<style>p { margin: 0 } a{color:red}</style> {not spintax} {{ '{' }}"
    assert render(css) == "<style>p { margin: 0 } a{color:red}</style> {not spintax} {"
    assert render("a } b | c {") == "a } b | c {"


def test_pathological_braces_are_text():
    # 25,000 unclosed braces: a parser that backtracked over them would take minutes here.
    source = " { " * 20000 + " {a|" * 5000
    assert render(source) == source


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="{}")))
def test_text_without_braces_renders_as_itself(text):
    assert render(text) == text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet=st.characters(blacklist_characters="{}|"), max_size=8), min_size=2),
    st.text(max_size=20),
)
def test_spintax_always_picks_one_of_the_options(options, seed):
    assert render("{" + "|".join(options) + "}", seed=seed) in options


def test_a_group_picks_alike_wherever_it_appears_in_one_message():
    for i in range(20):
        first, second = render("{a|b|c|d} / {a|b|c|d}", seed=str(i)).split(" / ")
        assert first == second


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab{} \n").filter(lambda t: "{{" not in t and not t.endswith("{")))
def test_literal_braces_survive_around_variables(text):
    assert render(text + " {{x}} " + text, {"x": "V{0}"}) == f"{text} V{{0}} {text}"


def test_repeated_and_adjacent_variables_in_one_run():
    source = "{{a}}{{b}} and {{a}}, {{ a }}; {{b | upper}}{{a}}{{c | default: '-'}}"
    assert render(source, {"a": "1", "b": "x"}) == "1x and 1, 1; X1-"
    assert render("{{a}}" * 3, {"a": "é"}) == "ééé"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["{{a}}", "{{b}}", "p", " ", "\n", "{x|y}", "}"]), max_size=30),
    st.text(max_size=5),
    st.text(max_size=5),
)
def test_rendering_splices_each_value_where_the_template_names_it(pieces, a, b):
    source = "".join(pieces)
    rendered = render(source, {"a": a, "b": b}, seed="fixed@acme.test")
    choice = render("{x|y}", seed="fixed@acme.test")
    expected = source.replace("{x|y}", choice).replace("{{a}}", "\0a").replace("{{b}}", "\0b")
    assert rendered == expected.replace("\0a", a).replace("\0b", b)
