// extract_doc_examples SOURCE_DIR OUTPUT - collects the documented examples
// so that tests/test_doc_examples.cpp compiles (and runs) every one of them.
//
// Examples are
//  - in a header under include/einmoe/: a comment line "// Example:" followed
//    by lines "//   code" (the block ends at the first line without that
//    three-space prefix), or the same in a function's doc comment ("///
//    Example:", "///   code"); id <folder>_<header>_<n> in file order, e.g.
//    ops_index_1;
//  - in README.md: every ```cpp block; id readme_<n>;
//  - in docs/<name>.md: every ```cpp block; id docs_<name>_<n> (a '-' of the
//    name as '_').
//
// OUTPUT gets, for each example, a section
//     #if defined(EINMOE_EXAMPLE_<id>)
//     #undef EINMOE_EXAMPLE_<id>
//     #line <line> "<file>"
//     <code>
//     #endif
// and a list EINMOE_DOC_EXAMPLE_LIST(<id>) of them all (under
// #if defined(EINMOE_DOC_EXAMPLE_LIST)), which the test turns into
// compile-time checks that it covers every example.
//
// A header comment line indented like example code and ending in ';' outside
// an Example block is an error: an example that nothing would compile.
// OUTPUT is rewritten only when its content changes.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct Example {
  std::string id, file;
  int line = 0;  // 1-based line of the first code line
  std::vector<std::string> code;
};

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

std::vector<std::string> read_lines(const fs::path& p) {
  std::ifstream in(p);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  return lines;
}

// "//   auto a = f(x);   // note" (or "///   ...") -> true: a statement at
// the examples' indentation (prose tables indent their continuation lines
// further).
bool looks_like_code(std::string line) {
  if (starts_with(line, "///")) line.erase(0, 1);
  if (!starts_with(line, "//   ") || line.size() < 6 || line[5] == ' ') return false;
  std::string body = line.substr(5);
  const auto comment = body.find("//");
  if (comment != std::string::npos) body.erase(comment);
  while (!body.empty() && (body.back() == ' ' || body.back() == '\t')) body.pop_back();
  if (body.empty() || body.back() != ';') return false;
  // a call, an assignment, a member access or a declaration "Type name(...)"
  static const std::regex statement(
      R"(^(auto|const|[A-Za-z_][\w:]*(<[^;]*>)?[&*]?\s+[&*]?[A-Za-z_]\w*\s*[=({;]|[A-Za-z_][\w:.]*\s*(\(|=|\.|->|\[)))");
  return std::regex_search(body, statement);
}

void from_header(const fs::path& root, const fs::path& header, std::vector<Example>& out,
                 std::vector<std::string>& errors) {
  const auto lines = read_lines(header);
  const std::string rel = fs::relative(header, root / "include" / "einmoe").generic_string();
  std::string stem = rel.substr(0, rel.size() - 4);  // drop ".hpp"
  std::replace(stem.begin(), stem.end(), '/', '_');
  int n = 0;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    // a file comment's "// Example:" or a function's "/// Example:"
    if (lines[i] == "// Example:" || lines[i] == "/// Example:") {
      const std::string code = lines[i][2] == '/' ? "///   " : "//   ";
      Example e;
      e.id = stem + "_" + std::to_string(++n);
      e.file = header.string();
      e.line = static_cast<int>(i) + 2;
      std::size_t j = i + 1;
      for (; j < lines.size() && starts_with(lines[j], code); ++j) e.code.push_back(lines[j].substr(code.size()));
      if (e.code.empty())
        throw std::runtime_error(header.string() + ":" + std::to_string(i + 1) + ": an Example: block without code");
      out.push_back(e);
      i = j - 1;
    } else if (looks_like_code(lines[i])) {
      errors.push_back(header.string() + ":" + std::to_string(i + 1) +
                       ": code outside an \"// Example:\" block (tests compile only those): " + lines[i]);
    }
  }
}

/// Every ```cpp block of a markdown file, as examples <prefix>_1, _2, ...
void from_markdown(const fs::path& md, const std::string& prefix, std::vector<Example>& out) {
  const auto lines = read_lines(md);
  int n = 0;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i] != "```cpp") continue;
    Example e;
    e.id = prefix + "_" + std::to_string(++n);
    e.file = md.string();
    e.line = static_cast<int>(i) + 2;
    std::size_t j = i + 1;
    for (; j < lines.size() && lines[j] != "```"; ++j) e.code.push_back(lines[j]);
    if (j == lines.size())
      throw std::runtime_error(md.string() + ":" + std::to_string(i + 1) + ": unterminated ```cpp block");
    out.push_back(e);
    i = j;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: extract_doc_examples SOURCE_DIR OUTPUT\n";
    return 2;
  }
  try {
    const fs::path root = argv[1];
    std::vector<fs::path> headers;
    for (const auto& entry : fs::recursive_directory_iterator(root / "include" / "einmoe"))
      if (entry.is_regular_file() && entry.path().extension() == ".hpp") headers.push_back(entry.path());
    std::sort(headers.begin(), headers.end());
    std::vector<Example> examples;
    std::vector<std::string> errors;
    for (const auto& h : headers) from_header(root, h, examples, errors);
    if (!errors.empty()) {
      for (const auto& e : errors) std::cerr << "extract_doc_examples: " << e << '\n';
      return 1;
    }
    from_markdown(root / "README.md", "readme", examples);
    std::vector<fs::path> docs;  // docs/<name>.md: examples docs_<name>_<n> ('-' as '_')
    for (const auto& entry : fs::directory_iterator(root / "docs"))
      if (entry.is_regular_file() && entry.path().extension() == ".md") docs.push_back(entry.path());
    std::sort(docs.begin(), docs.end());
    for (const auto& d : docs) {
      std::string stem = d.stem().string();
      std::replace(stem.begin(), stem.end(), '-', '_');
      from_markdown(d, "docs_" + stem, examples);
    }

    std::ostringstream s;
    s << "// Generated by tests/tools/extract_doc_examples.cpp from the headers' \"// Example:\"\n"
         "// blocks and the cpp blocks of README.md and docs/*.md. Do not edit.\n"
         "#if defined(EINMOE_DOC_EXAMPLE_LIST)\n";
    for (const auto& e : examples) s << "EINMOE_DOC_EXAMPLE_LIST(" << e.id << ")\n";
    s << "#endif\n";
    for (const auto& e : examples) {
      s << "#if defined(EINMOE_EXAMPLE_" << e.id << ")\n#undef EINMOE_EXAMPLE_" << e.id << "\n#line " << e.line << " \""
        << e.file << "\"\n";
      for (const auto& l : e.code) s << l << '\n';
      s << "#endif\n";
    }
    const std::string text = s.str();
    {
      std::ifstream old(argv[2], std::ios::binary);
      std::ostringstream prev;
      prev << old.rdbuf();
      if (old && prev.str() == text) return 0;
    }
    std::ofstream o(argv[2], std::ios::binary | std::ios::trunc);
    o << text;
    if (!o.flush()) throw std::runtime_error(std::string("cannot write ") + argv[2]);
    std::cout << "extract_doc_examples: " << examples.size() << " examples\n";
  } catch (const std::exception& e) {
    std::cerr << "extract_doc_examples: " << e.what() << '\n';
    return 1;
  }
}
