// Command ollama-template-oracle renders Ollama TEMPLATEs with Ollama's own template package.
//
// It reads a JSON array of cases from stdin, each {"template": ..., "messages": [...],
// "tools": [...], "think": true|false|null}, and writes a JSON array of results, each
// {"output": ...} or {"error": ...}. The test suite compares its Python renderer against it.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/template"
)

type request struct {
	Template string        `json:"template"`
	Messages []api.Message `json:"messages"`
	Tools    api.Tools     `json:"tools"`
	Think    *bool         `json:"think"`
}

type result struct {
	Output *string `json:"output,omitempty"`
	Error  *string `json:"error,omitempty"`
}

func render(r request) (res result) {
	defer func() {
		if p := recover(); p != nil {
			msg := fmt.Sprint("panic: ", p)
			res = result{Error: &msg}
		}
	}()
	tmpl, err := template.Parse(r.Template)
	if err != nil {
		msg := err.Error()
		return result{Error: &msg}
	}
	values := template.Values{Messages: r.Messages, Tools: r.Tools}
	if r.Think != nil {
		values.Think = *r.Think
		values.IsThinkSet = true
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, values); err != nil {
		msg := err.Error()
		return result{Error: &msg}
	}
	out := b.String()
	return result{Output: &out}
}

func main() {
	var reqs []request
	if err := json.NewDecoder(os.Stdin).Decode(&reqs); err != nil {
		fmt.Fprintln(os.Stderr, "reading cases:", err)
		os.Exit(2)
	}
	results := make([]result, len(reqs))
	for i, r := range reqs {
		results[i] = render(r)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, "writing results:", err)
		os.Exit(2)
	}
}
