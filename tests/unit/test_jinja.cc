// Unit tests of the chat-template interpreter's pieces (src/model/jinja/): expressions, filters,
// tests, statements, whitespace control, Undefined as jinja2's default, data marks, and errors
// and limits. Expected strings are what jinja2 3.1 prints for the same input.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/jinja/jinja.h"

namespace alem::jinja {
namespace {

std::string render(const std::string& src,
                   const nlohmann::ordered_json& vars = nlohmann::ordered_json::object(),
                   RenderOptions opt = {}) {
  Dict ctx;
  for (auto it = vars.begin(); it != vars.end(); ++it) {
    ctx.set(Str::literal(it.key()), Value::from_json(it.value(), true));
  }
  return Template(src).render(ctx, opt).text;
}

std::string error_of(const std::string& src,
                     const nlohmann::ordered_json& vars = nlohmann::ordered_json::object(),
                     RenderOptions opt = {}) {
  try {
    render(src, vars, opt);
  } catch (const Error& e) {
    return e.message();
  }
  return "(no error)";
}

TEST(Jinja, Expressions) {
  EXPECT_EQ(
      render(
          "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }}"),
      "7 9 3 -4 1 2");
  EXPECT_EQ(render("{{ 7 / 2 }} {{ 2 ** 10 }} {{ 1.5 + 1 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }}"),
            "3.5 1024 2.5 0.30000000000000004 1e+20 1e-05");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none }} {{ 'ab' * 3 }} {{ [1] + [2] }}"), "a1None ababab [1, 2]");
  EXPECT_EQ(
      render("{{ 1 < 2 < 3 }} {{ 2 in [1, 2] }} {{ 'b' in 'abc' }} {{ 'x' not in {'x': 1} }}"),
      "True True True False");
  EXPECT_EQ(render("{{ 0 or 'y' }} {{ 1 and 'z' }} {{ not 0 }} {{ 'a' if false else 'b' }}"),
            "y z True b");
  EXPECT_EQ(render("[{{ 'a' if false }}]"), "[]");
  EXPECT_EQ(render("{{ {'k': [1, 'two', none, true]} }}"), "{'k': [1, 'two', None, True]}");
  EXPECT_EQ(render("{{ \"it's\" }} {{ ['it\\'s'] }} {{ '\\u00e9\\n' }}"), "it's [\"it's\"] é\n");
}

TEST(Jinja, SubscriptsSlicesAndAttributes) {
  const nlohmann::ordered_json v = {{"m", {{"role", "user"}, {"content", "héllo"}}},
                                    {"xs", {1, 2, 3, 4}}};
  EXPECT_EQ(render("{{ m.role }} {{ m['content'] }} {{ m.content[1] }} {{ m.content[::-1] }}", v),
            "user héllo é olléh");
  EXPECT_EQ(render("{{ xs[1:] }} {{ xs[:-1] }} {{ xs[::2] }} {{ xs[-1] }} {{ xs[10] }}|", v),
            "[2, 3, 4] [1, 2, 3] [1, 3] 4 |");
  EXPECT_EQ(
      render("{{ m.missing }}|{{ m.missing is defined }}|{{ m.get('role') }}|{{ m.get('x', 5) }}",
             v),
      "|False|user|5");
  EXPECT_EQ(render("{% for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}", v),
            "role=user;content=héllo;");
}

TEST(Jinja, StringMethods) {
  EXPECT_EQ(render("{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '\\n\\na'.lstrip('\\n') "
                   "}}|{{ 'a  '.rstrip() }}|"),
            "a b|a|a|a|");
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }}"),
            "['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c']");
  EXPECT_EQ(render("{{ 'Ab'.upper() }} {{ 'Ab'.lower() }} {{ 'hello world'.title() }} {{ "
                   "'aXb'.replace('X', '-') }}"),
            "AB ab Hello World a-b");
  EXPECT_EQ(render("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ '{} and "
                   "{}'.format(1, 'b') }}"),
            "True True 1 and b");
  EXPECT_EQ(render("{{ '-'.join(['a', 'b']) }}"), "a-b");
}

TEST(Jinja, Filters) {
  const nlohmann::ordered_json v = {
      {"ms",
       {{{"role", "user"}, {"n", 1}}, {{"role", "tool"}, {"n", 2}}, {{"role", "user"}, {"n", 3}}}},
      {"d", {{"b", 1}, {"a", {1, 2}}}}};
  EXPECT_EQ(
      render("{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='n') | list }}", v),
      "[1, 3]");
  EXPECT_EQ(
      render("{{ ms | rejectattr('role', 'eq', 'user') | list | length }} {{ ms | first }}", v),
      "1 {'role': 'user', 'n': 1}");
  EXPECT_EQ(
      render("{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ d | tojson(sort_keys=true) }}", v),
      "{\"b\": 1, \"a\": [1, 2]}|{\n  \"b\": 1,\n  \"a\": [\n    1,\n    2\n  ]\n}|{\"a\": [1, 2], "
      "\"b\": 1}");
  EXPECT_EQ(render("{{ 'é\"\\n' | tojson }} {{ 1.0 | tojson }} {{ none | tojson }} {{ [] | "
                   "tojson(indent=4) }}"),
            "\"é\\\"\\n\" 1.0 null []");
  EXPECT_EQ(render("{{ ' x ' | trim }}|{{ 'abc' | length }}|{{ 'Ab' | upper }}{{ 'Ab' | lower "
                   "}}|{{ [1, 2] | join(', ') }}|{{ [3, 4] | last }}"),
            "x|3|ABab|1, 2|4");
  EXPECT_EQ(render("{{ undefined_name | default('dflt') }} {{ '' | default('e', true) }} {{ '12' | "
                   "int + 1 }} {{ 3 | string ~ 'x' }}"),
            "dflt e 13 3x");
  EXPECT_EQ(render("{% for k, v in d | items %}{{ k }}{% endfor %} {{ 'a-b' | replace('-', '+') }} "
                   "{{ 'x' | safe }}",
                   v),
            "ba a+b x");
}

TEST(Jinja, Tests) {
  const nlohmann::ordered_json v = {
      {"s", "x"}, {"n", nullptr}, {"d", {{"a", 1}}}, {"l", {1}}, {"t", true}};
  EXPECT_EQ(
      render(
          "{{ s is string }}{{ n is none }}{{ d is mapping }}{{ l is iterable }}{{ s is iterable }}"
          "{{ l is sequence }}{{ 1 is number }}{{ t is boolean }}{{ nope is undefined }}{{ s is "
          "defined }}"
          "{{ 1 is eq 1 }}{{ 2 is odd }}{{ 4 is divisibleby 2 }}{{ d is not string }}",
          v),
      "TrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueFalseTrueTrue");
}

TEST(Jinja, Statements) {
  EXPECT_EQ(
      render(
          "{% for x in [1, 2, 3] %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}"
          "{{ loop.length }};{% endfor %}"),
      "01TrueFalse3;12FalseFalse3;23FalseTrue3;");
  EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{{ loop.length }}{% endfor %}"),
            "2242");
  EXPECT_EQ(render("{% for x in range(10) %}{% if x == 3 %}{% break %}{% endif %}{% if x == 1 %}{% "
                   "continue %}{% endif %}{{ x }}{% endfor %}"),
            "02");
  EXPECT_EQ(render("{% if 0 %}a{% elif 1 %}b{% else %}c{% endif %}"), "b");
  // set inside a loop does not leak; namespace attributes do.
  EXPECT_EQ(render("{% set x = 1 %}{% set ns = namespace(y=1) %}{% for i in [5] %}{% set x = i %}"
                   "{% set ns.y = i %}{% endfor %}{{ x }} {{ ns.y }}"),
            "1 5");
  EXPECT_EQ(render("{% set b %}in {{ 1 + 1 }}{% endset %}[{{ b }}]"), "[in 2]");
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('A') }} {{ greet('B', punct='?') }}"),
            "Hi A! Hi B?");
  EXPECT_EQ(render("{% raw %}{{ not evaluated }}{% endraw %}"), "{{ not evaluated }}");
  EXPECT_EQ(render("{# comment #}a{% generation %}b{% endgeneration %}"), "ab");
}

TEST(Jinja, WhitespaceControlAsHuggingFace) {
  // trim_blocks drops the newline after a block tag; lstrip_blocks the indentation before it.
  EXPECT_EQ(render("{% if true %}\n  a\n{% endif %}\nb"), "  a\nb");
  EXPECT_EQ(render("x\n    {% if true %}\ny\n    {% endif %}\nz"), "x\ny\nz");
  EXPECT_EQ(render("a  {{- ' b ' -}}  c"), "a b c");
  EXPECT_EQ(render("a\n  {%- if true -%}\n  b  \n{%- endif %}"), "ab");
  EXPECT_EQ(render("{{ 'v' }}\nnext"), "v\nnext");  // no trim after {{ }}
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(render("line\n"), "line");  // one trailing newline is dropped, as jinja2
  EXPECT_EQ(render("a\r\nb"), "a\nb");
}

TEST(Jinja, UndefinedAsJinja2Default) {
  EXPECT_EQ(render("[{{ nothing }}]{% for x in nothing %}x{% endfor %}{{ nothing | length }}{% if "
                   "not nothing %}f{% endif %}"),
            "[]0f");
  EXPECT_NE(error_of("{{ nothing.attr }}").find("'nothing' is undefined"), std::string::npos);
  EXPECT_NE(error_of("{{ nothing + 1 }}").find("'nothing' is undefined"), std::string::npos);
  EXPECT_NE(error_of("{{ nothing() }}").find("'nothing' is undefined"), std::string::npos);
}

TEST(Jinja, StrftimeNowIsInjectable) {
  RenderOptions opt;
  std::tm tm{};
  tm.tm_year = 124;
  tm.tm_mon = 6;
  tm.tm_mday = 26;
  opt.now = tm;
  EXPECT_EQ(render("{{ strftime_now('%d %b %Y') }}", nlohmann::ordered_json::object(), opt),
            "26 Jul 2024");
}

TEST(Jinja, SyntaxErrorsNameLineAndColumn) {
  EXPECT_EQ(error_of("ok\n{% if x %}\n{{ 1 + }}\n{% endif %}"),
            "chat template: line 3, column 8: expected an expression (found the end of the tag)");
  EXPECT_NE(error_of("{% for x in y %}").find("missing {% endfor %}"), std::string::npos);
  EXPECT_NE(error_of("{{ 'abc }}").find("line 1, column 4: unterminated string"),
            std::string::npos);
  EXPECT_NE(error_of("a\n{% include 'x' %}")
                .find("line 2, column 4: unknown or unsupported tag 'include'"),
            std::string::npos);
  EXPECT_NE(error_of("{% break %}").find("outside a loop"), std::string::npos);
  EXPECT_NE(error_of("{{ x | nosuchfilter }}").find("unsupported filter 'nosuchfilter'"),
            std::string::npos);
}

TEST(Jinja, RaiseExceptionAndDataNeverQuoted) {
  EXPECT_EQ(error_of("a\n{{ raise_exception('Roles must alternate') }}"),
            "chat template: line 2: the template raised an error: Roles must alternate");
  const std::string secret = "canary-7f3a";
  const nlohmann::ordered_json v = {{"m", secret}, {"d", {{secret, 1}}}};
  for (const char* src : {"{{ raise_exception('bad: ' + m) }}", "{{ m.nosuchmethod() }}",
                          "{{ m + 1 }}", "{{ d[m ~ 'z'].x }}", "{{ m | int + m }}"}) {
    const std::string err = error_of(src, v);
    EXPECT_NE(err, "(no error)") << src;
    EXPECT_EQ(err.find(secret), std::string::npos) << err;
  }
}

TEST(Jinja, LimitsStopHostileTemplates) {
  RenderOptions opt;
  opt.max_steps = 100000;
  EXPECT_NE(
      error_of("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
               nlohmann::ordered_json::object(), opt)
          .find("steps (render limit)"),
      std::string::npos);
  opt = {};
  opt.max_output_bytes = 1000;
  EXPECT_NE(
      error_of("{% for a in range(1000) %}xx{% endfor %}", nlohmann::ordered_json::object(), opt)
          .find("render limit"),
      std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 100000000000 }}").find("render limit"), std::string::npos);
  EXPECT_NE(error_of("{{ range(1000000) }}").find("too large"), std::string::npos);
  EXPECT_NE(error_of("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}").find("deeper than"),
            std::string::npos);
  EXPECT_NE(error_of("{% set ns = namespace(x=[]) %}{% for i in range(100) %}{% set ns.x = [ns.x] "
                     "%}{% endfor %}")
                .find("nested deeper"),
            std::string::npos);
  // Deep syntax is refused while parsing, before anything recurses on it.
  EXPECT_NE(error_of("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}")
                .find("deeper than"),
            std::string::npos);
  std::string chain = "{{ x";
  for (int i = 0; i < 5000; ++i) chain += ".a";
  EXPECT_NE(error_of(chain + " }}").find("deeper than"), std::string::npos);
  std::string blocks;
  for (int i = 0; i < 5000; ++i) blocks += "{% if 1 %}";
  EXPECT_NE(error_of(blocks).find("deeper than"), std::string::npos);
}

TEST(Jinja, DataMarksFollowTheText) {
  Dict ctx;
  ctx.set(Str::literal("m"), Value::string(Str::from_data("<|x|> hi ")));
  const Str out =
      Template("<|a|>{{ m | trim }}<|b|>{{ (m ~ '<|c|>')[0:5] }}{{ m | tojson }}").render(ctx);
  EXPECT_EQ(out.text, "<|a|><|x|> hi<|b|><|x|>\"<|x|> hi \"");
  ASSERT_EQ(out.data.size(), 2u);
  EXPECT_EQ(out.text.substr(out.data[0].begin, out.data[0].end - out.data[0].begin), "<|x|> hi");
  EXPECT_EQ(out.text.substr(out.data[1].begin, out.data[1].end - out.data[1].begin),
            "<|x|>\"<|x|> hi \"");
}

}  // namespace
}  // namespace alem::jinja
